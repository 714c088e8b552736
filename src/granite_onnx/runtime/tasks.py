"""Parse the tagged transcripts of 4.1-2b-plus's tasks (``transcribe --task speakers|timestamps``).

- ``speakers``: ``[Speaker 1]: hello there [Speaker 2]: hi`` -> turns such as
  ``{"speaker": 1, "text": "hello there"}``; text before the first tag belongs to no speaker
  (``speaker`` None).
- ``timestamps``: ``hello [T:45] world [T:82]`` -> words with their end time. N is in centiseconds and the
  model writes it modulo 1000 (it wraps every 10 s), so a value smaller than the one before it starts the
  next 10 s: the times are unwrapped into seconds from the start. ``_`` marks silence and is kept as a word.

Pure functions of the text: no model, no torch. Malformed tags are left in the text, never an exception.
"""

from __future__ import annotations

import re

SPEAKER_TAG = re.compile(r"\[Speaker\s+(\d+)\]:")
TIME_TAG = re.compile(r"\[T:(\d+)\]")
WRAP_CENTISECONDS = 1000  # the model's timestamps are centiseconds modulo 1000


def parse_speakers(text: str) -> list[dict]:
    turns = []
    pieces = SPEAKER_TAG.split(text)
    if pieces[0].strip():
        turns.append({"speaker": None, "text": pieces[0].strip()})
    for number, said in zip(pieces[1::2], pieces[2::2], strict=True):
        turns.append({"speaker": int(number), "text": said.strip()})
    return turns


def unwrap_centiseconds(values: list[int], wrap: int = WRAP_CENTISECONDS) -> list[int]:
    """Centiseconds modulo ``wrap`` -> centiseconds from the start, assuming time never runs backwards."""
    out, offset, previous = [], 0, None
    for value in values:
        if previous is not None and value < previous:
            offset += wrap
        out.append(offset + value)
        previous = value
    return out


def parse_timestamps(text: str) -> list[dict]:
    """Each tag ends the words since the previous tag; several words before one tag share its end time, and
    words after the last tag have none (``end`` None)."""
    pieces = TIME_TAG.split(text)
    ends = [round(c / 100, 2) for c in unwrap_centiseconds([int(v) for v in pieces[1::2]])]
    ends.append(None)  # the text after the last tag
    return [
        {"word": word, "end": end}
        for said, end in zip(pieces[0::2], ends, strict=True)
        for word in said.split()
    ]


def parse_task_output(task: str, text: str) -> dict:
    """What ``--json`` adds for ``task``: ``turns`` (speakers), ``words`` (timestamps), nothing for asr."""
    if task == "speakers":
        return {"turns": parse_speakers(text)}
    if task == "timestamps":
        return {"words": parse_timestamps(text)}
    return {}
