"""WER with its uncertainty: a bootstrap interval over utterances for a tier's WER minus PyTorch's.

A corpus WER over a few hundred words moves by a word or two between nearly equal systems, so "int8 is
0.25 % worse than PyTorch" says nothing without its spread. Both WERs are measured against the human
references on the same utterances, so the difference is paired: each bootstrap resample draws utterances
with replacement and recomputes both corpus WERs (summed errors over summed reference words) on the same
draw. The interval is the central 95 % of those differences; a gate can hold its upper end.

The resampling uses numpy's PCG64 with a fixed seed and integer sums, so the interval is the same on
every CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jiwer
import numpy as np

from .metrics import normalise

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A tier's corpus WER minus PyTorch's (against the references) and its bootstrap interval."""

    value: float
    low: float
    high: float
    utterances: int
    words: int
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def to_json(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def utterance_errors(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance: word errors (substitutions + deletions + insertions) of ``hypotheses`` against
    ``references`` after normalisation, and the reference's word count. Their sums give jiwer's corpus WER."""
    errors, words = [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = normalise(ref), normalise(hyp)
        out = jiwer.process_words(ref, hyp)
        errors.append(out.substitutions + out.deletions + out.insertions)
        words.append(len(ref.split()))
    return np.asarray(errors, np.int64), np.asarray(words, np.int64)


def bootstrap_difference(
    references: Sequence[str | None],
    tier: Sequence[str],
    pytorch: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval | None:
    """The paired bootstrap of corpus WER(tier) - WER(PyTorch) over the utterances that have a non-empty
    reference (None when none has)."""
    kept = [(r, t, p) for r, t, p in zip(references, tier, pytorch, strict=True) if r and normalise(r)]
    if not kept:
        return None
    refs = [r for r, _, _ in kept]
    tier_errors, words = utterance_errors(refs, [t for _, t, _ in kept])
    torch_errors, _ = utterance_errors(refs, [p for _, _, p in kept])
    diff = tier_errors - torch_errors
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(kept), size=(resamples, len(kept)))
    totals = words[draws].sum(axis=1)
    samples = diff[draws].sum(axis=1) / np.maximum(totals, 1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(
        value=float(diff.sum() / words.sum()),
        low=float(low),
        high=float(high),
        utterances=len(kept),
        words=int(words.sum()),
        resamples=resamples,
        seed=seed,
        level=level,
    )
