"""Parity of a CTC bundle (granite-speech-5.0) against ``GraniteSpeech5ForCTC.generate``.

The same report as the autoregressive harness, its fields read for one graph with per-frame outputs:

- numeric block (one clip): ``encoder`` holds the logits' error statistics, ``prompt_logits_max_abs`` their
  largest error, ``prompt_argmax_agrees`` whether every frame's argmax agrees, ``decode`` the frames whose
  argmax differs (steps = frames) with PyTorch's top-1/top-2 margin at each; no KV cache (``kv_max_abs``
  None). ``transcript_match``: the collapsed ids equal ``generate``'s after the same collapse.
- per clip: ``pytorch_margins`` are PyTorch's margins per frame. CTC has no feedback, so every frame of a
  tier is compared, not just the first divergence: ``first_divergent_step`` is the first frame whose argmax
  differs and ``margin_at_divergence`` the *largest* PyTorch margin among all differing frames, so the
  near-tie gate holds only when every differing frame was a near-tie.

Both sides get the numpy front-end's features (:mod:`..runtime.ctc_features`) and an all-ones mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointSource, load_reference_model
from ..runtime.audio import load_audio
from ..runtime.ctc import CtcGreedy, CtcPipeline, collapse, greedy_ctc
from ..runtime.ctc_features import ctc_features
from .clips import Clip
from .metrics import ErrorStats, char_distance, top2_margins, wer
from .report import FP32, ClipParity, SingleClipBlock, TeacherForcing, TierTranscript


@dataclass(frozen=True)
class CtcReference:
    """``generate``'s frame labels, their collapse, and the logits they came from."""

    frame_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logits: np.ndarray  # [frames, vocab]


@torch.no_grad()
def reference_ctc(model, features: np.ndarray) -> CtcReference:
    """``model.generate`` (greedy argmax, padded frames set to the blank) on one utterance, collapsed as
    ``ParakeetTokenizer.decode`` does; and the forward's logits, for the numeric block and the margins."""
    x = torch.from_numpy(features)
    mask = torch.ones(features.shape[:2], dtype=torch.long)
    frames = model.generate(input_features=x, attention_mask=mask)[0].tolist()
    logits = model(input_features=x, attention_mask=mask).logits[0].numpy()
    return CtcReference(tuple(frames), collapse(frames, model.config.pad_token_id), logits)


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"


class _CtcContext:
    def __init__(self, bundle: Path, checkpoint: Path, tiers: tuple[str, ...], threads):
        self.model = load_reference_model(checkpoint)
        self.pipelines = {t: CtcPipeline(bundle, None if t == FP32 else t, threads) for t in tiers}
        self.fp32 = self.pipelines.get(FP32) or next(iter(self.pipelines.values()))
        self._memo: dict[Clip, tuple[np.ndarray, CtcReference]] = {}

    def clip(self, clip: Clip) -> tuple[np.ndarray, CtcReference]:
        if clip not in self._memo:
            cfg = self.fp32.bundle.features
            features = ctc_features(load_audio(clip.path, cfg.sampling_rate), cfg)[None]
            self._memo[clip] = (features, reference_ctc(self.model, features))
        return self._memo[clip]

    def run(self, tier: str, features: np.ndarray) -> tuple[np.ndarray, CtcGreedy]:
        pipe = self.pipelines[tier]
        logits = pipe.logits(features)
        return logits[0], greedy_ctc(
            logits[0], pipe.bundle.dims.output_frames(features.shape[1]), pipe.bundle.dims.blank_id
        )


def _differing(got: tuple[int, ...], ref: CtcReference) -> list[int]:
    if len(got) != len(ref.frame_ids):
        return list(range(min(len(got), len(ref.frame_ids)), max(len(got), len(ref.frame_ids))))
    return [i for i, (a, b) in enumerate(zip(got, ref.frame_ids, strict=True)) if a != b]


def numeric_block(ctx: _CtcContext, tier: str, clip: Clip) -> SingleClipBlock:
    try:
        features, ref = ctx.clip(clip)
        logits, out = ctx.run(tier, features)
        margins = top2_margins(ref.logits)
        bad = _differing(out.frame_ids, ref)
        return SingleClipBlock(
            tier=tier,
            clip=clip.name,
            encoder=ErrorStats.of(logits, ref.logits),
            prompt_logits_max_abs=ErrorStats.of(logits, ref.logits).max_abs,
            prompt_argmax_agrees=not bad,
            kv_max_abs=None,
            decode=TeacherForcing(
                steps=len(ref.frame_ids),
                mismatches=len(bad),
                mismatch_steps=tuple(bad),
                mismatch_margins=tuple(float(margins[i]) for i in bad if i < len(margins)),
            ),
            transcript_match=out.token_ids == ref.token_ids,
        )
    except Exception as exc:  # a graph that cannot run is a finding, not a crash
        return SingleClipBlock(tier, clip.name, None, None, False, None, None, False, error=_describe(exc))


def clip_parity(ctx: _CtcContext, clip: Clip) -> ClipParity:
    features, ref = ctx.clip(clip)
    margins = top2_margins(ref.logits)
    pytorch_text = ctx.fp32.text(ref.token_ids)
    runs: dict[str, tuple[str, CtcGreedy | None, str | None]] = {}
    for tier in ctx.pipelines:
        try:
            out = ctx.run(tier, features)[1]
            runs[tier] = (ctx.fp32.text(out.token_ids), out, None)
        except Exception as exc:  # a broken graph is a parity failure to report, not a crash
            runs[tier] = ("", None, _describe(exc))
    fp32_text = runs.get(FP32, (pytorch_text,))[0]
    tiers = []
    for tier, (text, out, error) in runs.items():
        bad = _differing(out.frame_ids, ref) if out is not None else [0]
        worst = max((float(margins[i]) for i in bad if i < len(margins)), default=None)
        tiers.append(
            TierTranscript(
                tier=tier,
                text=text,
                byte_exact=error is None and text == pytorch_text and out.token_ids == ref.token_ids,
                wer_vs_pytorch=wer(pytorch_text, text) if error is None else 1.0,
                wer_vs_reference=wer(clip.reference, text) if clip.reference and error is None else None,
                levenshtein_vs_fp32=char_distance(fp32_text, text),
                first_divergent_step=(bad[0] if bad else None) if error is None else 0,
                tokens=len(out.token_ids) if out is not None else 0,
                error=error,
                margin_at_divergence=round(worst, 4) if worst is not None and error is None else None,
            )
        )
    cfg = ctx.fp32.bundle.features
    return ClipParity(
        clip_set=clip.clip_set,
        clip=clip.name,
        duration_s=round(features.shape[1] * 2 * cfg.hop_length / cfg.sampling_rate, 2),
        reference_text=clip.reference,
        pytorch_text=pytorch_text,
        pytorch_wer_vs_reference=wer(clip.reference, pytorch_text) if clip.reference else None,
        tiers=tuple(tiers),
        pytorch_margins=tuple(round(float(m), 4) for m in margins),
    )


def run_ctc_parity(
    bundle: Path,
    checkpoint: CheckpointSource,
    clips: Sequence[Clip],
    ref_clip: Clip,
    tiers: tuple[str, ...],
    threads: int | None,
    progress: Callable[[int, int, str], None],
) -> tuple[tuple[SingleClipBlock, ...], tuple[ClipParity, ...]]:
    """The numeric blocks and per-clip parity of a CTC bundle (the harness adds the sets and the gates,
    the autoregressive ones read per frame)."""
    ctx = _CtcContext(Path(bundle), checkpoint.path, tiers, threads)
    blocks = tuple(numeric_block(ctx, tier, ref_clip) for tier in tiers)
    progress(0, len(clips), "numeric block done")
    results = []
    for i, clip in enumerate(clips, 1):
        results.append(clip_parity(ctx, clip))
        progress(i, len(clips), clip.name)
    return blocks, tuple(results)
