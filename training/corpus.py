"""Sentences with known transcripts, from a small grammar: a few hundred words, numbers, names.

The transcript is exactly what is spoken: lower-case words, numbers written out as words, no
punctuation. The same seed always gives the same sentences; the held-out set uses another seed and
only sentences that are not in the training set.
"""

from __future__ import annotations

import random

NOUNS = [
    "box",
    "table",
    "chair",
    "window",
    "door",
    "garden",
    "kitchen",
    "river",
    "mountain",
    "city",
    "road",
    "bridge",
    "train",
    "station",
    "ticket",
    "letter",
    "book",
    "paper",
    "pencil",
    "phone",
    "computer",
    "screen",
    "camera",
    "picture",
    "lamp",
    "clock",
    "cup",
    "plate",
    "bottle",
    "basket",
    "apple",
    "orange",
    "bread",
    "cheese",
    "coffee",
    "water",
    "tea",
    "soup",
    "cake",
    "hat",
    "coat",
    "shoe",
    "shirt",
    "bag",
    "key",
    "map",
    "card",
    "radio",
    "engine",
    "wheel",
    "boat",
    "plane",
    "bus",
    "car",
    "bicycle",
    "dog",
    "cat",
    "bird",
    "horse",
    "fish",
    "tree",
    "flower",
    "stone",
    "cloud",
]
ADJECTIVES = [
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "small",
    "large",
    "old",
    "new",
    "warm",
    "cold",
    "quiet",
    "loud",
    "bright",
    "dark",
    "heavy",
    "light",
    "empty",
    "full",
    "clean",
    "broken",
    "early",
    "late",
    "quick",
    "slow",
]
VERBS = [
    "open",
    "close",
    "move",
    "carry",
    "paint",
    "clean",
    "find",
    "bring",
    "send",
    "check",
    "fix",
    "wash",
    "take",
    "sell",
    "buy",
    "keep",
]
PAST_VERBS = [
    *("opened", "closed", "moved", "carried", "painted", "cleaned", "found", "brought"),
    *("sent", "checked", "fixed", "washed", "took", "sold", "bought", "kept"),
]
NAMES = [
    "anna",
    "peter",
    "maria",
    "david",
    "laura",
    "james",
    "sofia",
    "thomas",
    "emma",
    "daniel",
    "lucy",
    "robert",
    "nina",
    "oscar",
    "clara",
    "henry",
]
PLACES = [
    "london",
    "paris",
    "berlin",
    "madrid",
    "rome",
    "vienna",
    "boston",
    "denver",
    "chicago",
    "toronto",
    "sydney",
    "dublin",
]
ROOMS = ["office", "kitchen", "garage", "hall", "library", "classroom", "shop", "studio"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
PREPOSITIONS = ("on", "under", "near", "behind", "beside", "inside")
TIMES = ("this morning", "this evening", "last night", "yesterday", "today", "tomorrow", "next week")

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
]


def number_words(n: int) -> str:
    """0..999 as spoken English ("four hundred and twenty one")."""
    if not 0 <= n <= 999:
        raise ValueError(n)
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def _sentence(r: random.Random) -> str:
    noun, noun2 = r.sample(NOUNS, 2)
    name, name2 = r.sample(NAMES, 2)
    adj = r.choice(ADJECTIVES)
    count = number_words(r.choice((r.randint(2, 20), r.randint(21, 999))))
    templates = (
        lambda: f"the {adj} {noun} is {r.choice(PREPOSITIONS)} the {noun2}",
        lambda: f"{name} {r.choice(PAST_VERBS)} {count} {noun}s {r.choice(TIMES)}",
        lambda: f"please {r.choice(VERBS)} the {adj} {noun} before {r.choice(DAYS)}",
        lambda: f"we need {count} {noun}s for the {r.choice(ROOMS)}",
        lambda: "call " + name + " at " + " ".join(ONES[r.randint(0, 9)] for _ in range(r.randint(4, 7))),
        lambda: (
            f"the train to {r.choice(PLACES)} leaves at {number_words(r.randint(1, 12))} "
            f"{number_words(r.randint(10, 59))}"
        ),
        lambda: f"it costs {count} dollars and {number_words(r.randint(1, 99))} cents",
        lambda: f"{name} and {name2} went to {r.choice(PLACES)} on {r.choice(DAYS)}",
        lambda: f"how many {noun}s did {name} {r.choice(VERBS)} {r.choice(TIMES)}",
        lambda: f"the meeting is on {r.choice(MONTHS)} {r.choice(ORDINALS)}",
        lambda: f"there are {count} {adj} {noun}s in the {r.choice(ROOMS)}",
        lambda: f"{name} {r.choice(PAST_VERBS)} the {adj} {noun} {r.choice(PREPOSITIONS)} the {noun2}",
        lambda: f"room {number_words(r.randint(100, 999))} is next to the {r.choice(ROOMS)}",
    )
    return r.choice(templates)()


def sentences(count: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    """``count`` distinct sentences drawn with ``seed``, none of them in ``exclude``."""
    r = random.Random(seed)
    out: list[str] = []
    seen = set(exclude)
    while len(out) < count:
        text = _sentence(r)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def spoken_form(transcript: str) -> str:
    """What piper reads: a capitalised sentence with a full stop (for a natural falling intonation)."""
    return transcript[0].upper() + transcript[1:] + "."


def vocabulary(texts: list[str]) -> set[str]:
    return {w for t in texts for w in t.split()}
