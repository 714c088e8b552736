"""Parity per clip set: the same measures, pooled over the clips of each folder given to ``--clips``.

A trained model is judged on two sets at once: held-out speech like its training data, where it
transcribes, and real recordings, where it may not. Pooling them would hide one behind the other.
"""

from __future__ import annotations

import jiwer
import numpy as np

from .metrics import normalise
from .report import ClipParity
from .uncertainty import Interval, bootstrap_difference


def _corpus(pairs: list[tuple[str, str]], measure) -> float | None:
    pairs = [(normalise(r), normalise(h)) for r, h in pairs if r is not None]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return None
    return round(float(measure([r for r, _ in pairs], [h for _, h in pairs])), 6)


def set_summary(clips: list[ClipParity], tiers: tuple[str, ...]) -> dict:
    """Corpus WER/CER of PyTorch against the references, each tier against PyTorch and the references (and
    its difference from PyTorch's with a bootstrap interval, :mod:`.uncertainty`), PyTorch's median
    top-1/top-2 margin, and the margins where each tier first left PyTorch."""
    margins = [m for c in clips for m in c.pytorch_margins]
    refs = [(c.reference_text, c.pytorch_text) for c in clips]
    summary = {
        "clips": len(clips),
        "pytorch_wer_vs_reference": _corpus(refs, jiwer.wer),
        "pytorch_cer_vs_reference": _corpus(refs, jiwer.cer),
        "pytorch_median_margin": round(float(np.median(margins)), 4) if margins else None,
        "tiers": {},
    }
    for tier in tiers:
        runs = [(c, t) for c in clips for t in c.tiers if t.tier == tier]
        summary["tiers"][tier] = {
            "wer_vs_pytorch": _corpus([(c.pytorch_text, t.text) for c, t in runs], jiwer.wer),
            "wer_vs_reference": _corpus([(c.reference_text, t.text) for c, t in runs], jiwer.wer),
            # the tier's WER vs the references minus PyTorch's, paired over utterances, with its interval
            "wer_delta_vs_pytorch": _delta(runs),
            "divergent_clips": sum(1 for _, t in runs if t.first_divergent_step is not None),
            "margins_at_divergence": [
                t.margin_at_divergence for _, t in runs if t.margin_at_divergence is not None
            ],
        }
    return summary


def tier_difference(runs: list) -> Interval | None:
    """The paired bootstrap of one tier's WER vs the references minus PyTorch's, over ``runs`` (each a clip
    and that tier's transcript of it)."""
    return bootstrap_difference(
        [c.reference_text for c, _ in runs], [t.text for _, t in runs], [c.pytorch_text for c, _ in runs]
    )


def _delta(runs: list) -> dict | None:
    interval = tier_difference(runs)
    return interval.to_json() if interval else None


def set_summaries(clips: tuple[ClipParity, ...], tiers: tuple[str, ...]) -> dict[str, dict]:
    """One :func:`set_summary` per clip set, in the order the sets were given."""
    names = list(dict.fromkeys(c.clip_set for c in clips))
    return {name: set_summary([c for c in clips if c.clip_set == name], tiers) for name in names}
