"""Text and tensor metrics for parity, with one stated text normalisation.

WER uses ``jiwer`` and character edit distance ``rapidfuzz``; both on the same normalised text:
lower-case, every character that is not a letter, digit, apostrophe or whitespace replaced by a
space, whitespace collapsed. Byte-exact comparisons use the raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jiwer
import numpy as np
from rapidfuzz.distance import Levenshtein

NORMALISATION = (
    "lower-case; characters other than letters, digits, apostrophes and whitespace -> space; "
    "whitespace collapsed"
)
_STRIP = re.compile(r"[^\w\s']|_", re.UNICODE)


NEAR_TIE_PERCENTILE = 10  # a near-tie: a step whose PyTorch margin is in the lowest 10 % over all clips


def near_tie_limit(margins) -> float:
    """PyTorch's top-1/top-2 margin below which a greedy step counts as a near-tie (pooled margins)."""
    margins = list(margins)
    return float(np.percentile(margins, NEAR_TIE_PERCENTILE)) if margins else 0.0


def normalise(text: str) -> str:
    return " ".join(_STRIP.sub(" ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after normalisation.

    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise (jiwer refuses it).
    """
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp))


def char_distance(a: str, b: str) -> int:
    """Character-level Levenshtein distance between two normalised texts."""
    return int(Levenshtein.distance(normalise(a), normalise(b)))


def first_divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """Index of the first generated token where two id sequences differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    p99_abs: float

    @classmethod
    def of(cls, got: np.ndarray, want: np.ndarray) -> ErrorStats:
        if got.shape != want.shape:
            raise ValueError(f"shape {got.shape} != {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64)).ravel()
        if diff.size == 0:
            return cls(0.0, 0.0, 0.0)
        return cls(float(diff.max()), float(diff.mean()), float(np.percentile(diff, 99)))


def top2_margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit for each row of [steps, vocab]."""
    top = np.sort(logits, axis=-1)[..., -2:]
    return top[..., 1] - top[..., 0]
