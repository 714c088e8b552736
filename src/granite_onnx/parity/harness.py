"""The parity harness: every tier of a bundle against transformers' PyTorch model on real clips.

Per tier, a numeric block on one reference clip (encoder error, prompt logits and KV error,
decode_step under teacher forcing) and, over every clip, free-running greedy transcripts compared
with PyTorch's (byte-exact, WER, edit distance, first divergent step). Gates turn that into a verdict:
FP32 must be byte-exact on every clip; each quantised tier's corpus WER against PyTorch must stay
under a limit. Both sides receive identical features from the numpy front-end.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from ..checkpoint import CheckpointSource, load_reference_model
from ..errors import GraniteOnnxError
from ..registry import entry_of_fixture
from ..runtime.audio import load_audio
from ..runtime.bundle import available_tiers, bundle_graph_names
from ..runtime.cpu import current_cpu
from ..runtime.features import audio_token_count, log_mel
from ..runtime.pipeline import SpeechPipeline, decode_form
from ..runtime.saturation import tier_verdict
from ..specs import CTC
from ..userfiles import is_file, shown_path
from . import reference
from .clips import Clip, load_clip_sets
from .ctc import run_ctc_parity
from .datasets import dataset_facts
from .metrics import (
    NEAR_TIE_PERCENTILE,
    NORMALISATION,
    ErrorStats,
    char_distance,
    first_divergence,
    near_tie_limit,
    normalise,
    top2_margins,
    wer,
)
from .report import (
    FP32,
    ClipParity,
    Gate,
    ParityReport,
    SingleClipBlock,
    TeacherForcing,
    TierTranscript,
)
from .sets import set_summaries, tier_difference
from .store import ClipStore


@dataclass(frozen=True)
class ParityOptions:
    tiers: tuple[str, ...] = ()  # empty: every tier found in the bundle
    reference_clip: str | None = None  # default: the manifest's first clip
    max_new_tokens: int = 200
    wer_limit: float = 0.02  # corpus WER vs PyTorch allowed for quantised tiers
    jobs: int = 1
    threads: int | None = None
    # How quantised tiers are gated: "wer" (corpus WER vs PyTorch under wer_limit), "near-tie" (every
    # divergence from PyTorch happens at one of its own near-ties), "auto" (near-tie for the random
    # tiny fixture, whose transcripts are noise to any INT8 error; wer otherwise).
    quantised_gate: str = "auto"
    # Clip set (a --clips folder name) the quantised-tier gates are computed on; None: every clip. A trained
    # model is gated where it transcribes (held-out speech); other sets are reported per set.
    gate_set: str | None = None
    ungated: tuple[str, ...] = ()  # quantised tiers measured and reported but given no gate
    # A further gate per quantised tier, when set: the upper end of the 95 % bootstrap interval of its WER
    # vs the references minus PyTorch's (parity/uncertainty.py) at most this.
    wer_delta_limit: float | None = None
    # "local": --jobs processes on this machine; "ray": --jobs Ray actors (parity/cluster.py), on a local
    # cluster or the one at ``address``.
    executor: str = "local"
    address: str | None = None
    worker_cpus: int = 1  # CPUs each Ray actor reserves


QUANTISED_GATES = ("auto", "wer", "near-tie")
EXECUTORS = ("local", "ray")


def resolve_quantised_gate(option: str, checkpoint: CheckpointSource) -> str:
    if option not in QUANTISED_GATES:
        raise GraniteOnnxError(f"unknown quantised gate {option!r}: choose from {', '.join(QUANTISED_GATES)}")
    if option != "auto":
        return option
    random_fixture = checkpoint.is_fixture and entry_of_fixture(checkpoint.model_id or "") is not None
    return "near-tie" if random_fixture else "wer"


def tier_label(tier: str | None) -> str:
    return tier or FP32


def _tier_arg(label: str) -> str | None:
    return None if label == FP32 else label


class _Context:
    """What a worker holds: the reference model, one pipeline per tier, the clip's features."""

    def __init__(self, bundle: Path, checkpoint: Path, tiers: tuple[str, ...], max_new_tokens: int, threads):
        self.model = load_reference_model(checkpoint)
        self.pipelines = {t: SpeechPipeline(bundle, tier=_tier_arg(t), threads=threads) for t in tiers}
        self.max_new_tokens = max_new_tokens
        self.fp32 = self.pipelines.get(FP32) or next(iter(self.pipelines.values()))
        self._memo: dict[tuple[str, Clip], object] = {}

    def _once(self, what: str, clip: Clip, compute):
        """Per-clip results that do not depend on the tier (features, every PyTorch run) are made once."""
        key = (what, clip)
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def features(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        return self._once("features", clip, lambda: self._features(clip))

    def greedy(self, clip: Clip) -> reference.ReferenceGreedy:
        """PyTorch's greedy decode of the clip, shared by every tier's numeric block and the clip table."""
        features, ids = self.features(clip)
        return self._once(
            "greedy", clip, lambda: reference.greedy(self.model, ids, features, self.budget(ids.shape[1]))
        )

    def pytorch_prompt(self, clip: Clip) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """PyTorch's audio embeddings, last prompt logits and KV for the clip."""
        features, ids = self.features(clip)
        return self._once(
            "prompt",
            clip,
            lambda: (
                reference.audio_embeds(self.model, features),
                *reference.prompt_outputs(self.model, ids, features),
            ),
        )

    def _features(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
        """[1, frames, 160] features and the prompt ids holding one audio token per expected embedding.

        The audio token count comes from the feature extractor's formula, not from the ONNX encoder,
        so a wrong encoder cannot make its own prompt.
        """
        cfg = self.fp32.bundle.features
        audio = load_audio(clip.path, cfg.sampling_rate)
        return log_mel(audio, cfg)[None], self.fp32.prompt_ids(audio_token_count(len(audio), cfg))

    def budget(self, prompt_len: int) -> int:
        return max(1, min(self.max_new_tokens, self.fp32.bundle.dims.max_positions - prompt_len))


def single_clip_block(ctx: _Context, tier: str, clip: Clip) -> SingleClipBlock:
    try:
        return _numeric_block(ctx, tier, clip)
    except Exception as exc:  # a graph that cannot run or has the wrong shape is a finding, not a crash
        return SingleClipBlock(tier, clip.name, None, None, False, None, None, False, error=_describe(exc))


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"


def _numeric_block(ctx: _Context, tier: str, clip: Clip) -> SingleClipBlock:
    pipe = ctx.pipelines[tier]
    features, ids = ctx.features(clip)
    want_embeds, want_logits, want_kv = ctx.pytorch_prompt(clip)
    embeds = pipe.audio_embeds(features)
    logits, kv = pipe.prompt(ids, embeds)
    ref = ctx.greedy(clip)

    targets = ref.step_logits.argmax(-1)
    margins = top2_margins(ref.step_logits)
    mismatch_steps, step_logits, cache = [], logits, kv
    for step, target in enumerate(targets):
        if int(np.argmax(step_logits[0])) != int(target):
            mismatch_steps.append(step)
        if step + 1 < len(targets):
            step_logits, cache = pipe.step(np.array([[target]], np.int64), cache)
    free = pipe.generate(ids, embeds, ctx.budget(ids.shape[1]))
    return SingleClipBlock(
        tier=tier,
        clip=clip.name,
        encoder=ErrorStats.of(embeds, want_embeds),
        prompt_logits_max_abs=ErrorStats.of(logits, want_logits).max_abs,
        prompt_argmax_agrees=bool(np.array_equal(logits.argmax(-1), want_logits.argmax(-1))),
        kv_max_abs=max(ErrorStats.of(g, w).max_abs for g, w in zip(kv, want_kv, strict=True)),
        decode=TeacherForcing(
            steps=len(targets),
            mismatches=len(mismatch_steps),
            mismatch_steps=tuple(mismatch_steps),
            mismatch_margins=tuple(float(margins[s]) for s in mismatch_steps),
        ),
        transcript_match=free.token_ids == ref.token_ids,
    )


def clip_parity(ctx: _Context, clip: Clip) -> ClipParity:
    features, ids = ctx.features(clip)
    prompts = ctx.fp32.prompts
    ref = ctx.greedy(clip)
    pytorch_text = prompts.decode(list(ref.token_ids))
    runs: dict[str, tuple[str, tuple[int, ...], str | None]] = {}
    for tier, pipe in ctx.pipelines.items():
        try:
            out = pipe.generate(ids, pipe.audio_embeds(features), ctx.budget(ids.shape[1]))
            runs[tier] = (prompts.decode(list(out.token_ids)), out.token_ids, None)
        except Exception as exc:  # a broken graph is a parity failure to report, not a crash
            runs[tier] = ("", (), _describe(exc))
    fp32_text = runs.get(FP32, (pytorch_text,))[0]
    margins = top2_margins(ref.step_logits)

    def margin_at(step: int | None) -> float | None:
        return round(float(margins[step]), 4) if step is not None and step < len(margins) else None

    tiers = tuple(
        TierTranscript(
            tier=tier,
            text=text,
            byte_exact=error is None and text == pytorch_text,
            wer_vs_pytorch=wer(pytorch_text, text) if error is None else 1.0,
            wer_vs_reference=wer(clip.reference, text) if clip.reference and error is None else None,
            levenshtein_vs_fp32=char_distance(fp32_text, text),
            first_divergent_step=first_divergence(tokens, ref.token_ids) if error is None else 0,
            tokens=len(tokens),
            error=error,
            margin_at_divergence=margin_at(first_divergence(tokens, ref.token_ids))
            if error is None
            else None,
        )
        for tier, (text, tokens, error) in runs.items()
    )
    audio_seconds = (
        features.shape[1] * 2 * ctx.fp32.bundle.features.hop_length / ctx.fp32.bundle.features.sampling_rate
    )
    return ClipParity(
        clip_set=clip.clip_set,
        clip=clip.name,
        duration_s=round(audio_seconds, 2),
        reference_text=clip.reference,
        pytorch_text=pytorch_text,
        pytorch_wer_vs_reference=wer(clip.reference, pytorch_text) if clip.reference else None,
        tiers=tiers,
        pytorch_margins=tuple(round(float(m), 4) for m in margins),
    )


def corpus_wer(clips: tuple[ClipParity, ...], tier: str) -> float:
    """Corpus WER of a tier against PyTorch (all clips' words pooled), on normalised text."""
    pairs = [(normalise(c.pytorch_text), normalise(t.text)) for c in clips for t in c.tiers if t.tier == tier]
    pairs = [(r, h) for r, h in pairs if r] or [("", "")]
    if pairs == [("", "")]:
        return 0.0
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def near_tie_margin(clips: tuple[ClipParity, ...]) -> float:
    """PyTorch's top-1/top-2 margin below which a step counts as a near-tie (pooled over every clip)."""
    return near_tie_limit(m for c in clips for m in c.pytorch_margins)


def _near_tie_gate(clips: tuple[ClipParity, ...], tier: str, wer_value: float) -> Gate:
    """Every free-running divergence of ``tier`` from PyTorch starts at a PyTorch near-tie.

    On random weights many steps are near-ties that any INT8 error flips, after which the two
    transcripts share nothing, so WER measures luck. A tier whose error is larger than rounding
    (a clipped range, a wrong scale) diverges at confident steps too, which this gate catches.
    """
    limit = near_tie_margin(clips)
    found = [(c.clip, t.margin_at_divergence) for c in clips for t in c.tiers if t.tier == tier]
    bad = [(clip, m) for clip, m in found if m is not None and m > limit]
    margins = ", ".join(f"{m:.3f}" for _, m in found if m is not None) or "none"
    detail = (
        f"divergences at PyTorch margins [{margins}], near-tie limit {limit:.3f} "
        f"(p{NEAR_TIE_PERCENTILE} of its margins); corpus WER {wer_value:.2%} not gated (random weights)"
    )
    if bad:
        detail = f"diverges at confident steps {bad} (near-tie limit {limit:.3f}); corpus WER {wer_value:.2%}"
    return Gate(f"{tier}_diverges_only_at_near_ties", not bad, detail)


def _in_set(clips: tuple[ClipParity, ...], name: str | None) -> tuple[ClipParity, ...]:
    if name is None:
        return clips
    chosen = tuple(c for c in clips if c.clip_set == name)
    if not chosen:
        sets = sorted({c.clip_set for c in clips})
        raise GraniteOnnxError(f"--gate-set {name!r} names no --clips folder: choose from {', '.join(sets)}")
    return chosen


def gates(
    clips: tuple[ClipParity, ...],
    blocks: tuple[SingleClipBlock, ...],
    tiers,
    wer_limit: float,
    quantised_gate: str = "wer",
    wer_delta_limit: float | None = None,
) -> tuple[Gate, ...]:
    out = []
    if FP32 in tiers:
        bad = [c.clip for c in clips for t in c.tiers if t.tier == FP32 and not t.byte_exact]
        out.append(
            Gate("fp32_byte_exact", not bad, "all clips byte-exact" if not bad else f"differs on {bad}")
        )
    for block in blocks:
        if block.error:
            out.append(Gate(f"{block.tier}_numeric_block", False, f"{block.clip}: {block.error}"))
    for tier in tiers:
        broken = [c.clip for c in clips for t in c.tiers if t.tier == tier and t.error]
        if broken:
            out.append(Gate(f"{tier}_runs", False, f"failed to run on {broken}"))
        if tier == FP32:
            continue
        value = corpus_wer(clips, tier)
        if quantised_gate == "near-tie":
            out.append(_near_tie_gate(clips, tier, value))
        else:
            out.append(
                Gate(
                    f"{tier}_wer_vs_pytorch",
                    value <= wer_limit,
                    f"corpus WER {value:.2%} (limit {wer_limit:.2%})",
                )
            )
        if wer_delta_limit is not None:
            out.append(_delta_gate(clips, tier, wer_delta_limit))
    return tuple(out)


def _delta_gate(clips: tuple[ClipParity, ...], tier: str, limit: float) -> Gate:
    """The tier's WER vs the references minus PyTorch's: the interval's upper end at most ``limit``."""
    runs = [(c, t) for c in clips for t in c.tiers if t.tier == tier]
    interval = tier_difference(runs)
    name = f"{tier}_wer_delta_vs_pytorch"
    if interval is None:
        return Gate(name, False, "no clip has a human reference: the interval cannot be computed")
    return Gate(
        name,
        interval.high <= limit,
        f"WER vs references minus PyTorch's {interval.value:+.2%}, 95 % interval "
        f"[{interval.low:+.2%}, {interval.high:+.2%}] over {interval.utterances} utterances "
        f"(upper end limit {limit:+.2%})",
    )


def _dataset_entry(folder: Path) -> dict:
    """For a clip set written from a dataset (``parity --dataset``): where it came from, and the rows that
    failed to decode, by name."""
    facts = dataset_facts(folder)
    return {"dataset": facts} if facts else {}


def _check_same_model(bundle: Path, checkpoint: Path) -> None:
    """Parity against another checkpoint would report a failure that is no fault of the graphs."""
    ours, theirs = bundle / "config.json", checkpoint / "config.json"
    if is_file(ours) and is_file(theirs) and ours.read_bytes() != theirs.read_bytes():
        raise GraniteOnnxError(
            f"{bundle} was exported from another checkpoint (its config.json differs from {theirs}): "
            "pass the --model-dir it was exported from"
        )


def _run_autoregressive(bundle, checkpoint, clips, ref_clip, tiers, options, tick, store=None):
    """The numeric blocks and per-clip parity of an autoregressive bundle (clips in ``options.jobs``
    processes, or Ray actors). Clips already in ``store`` are kept; each new one is saved as it finishes."""
    args = (Path(bundle), checkpoint.path, tuple(tiers), options.max_new_tokens, options.threads)
    ctx = _Context(*args)
    blocks = tuple(single_clip_block(ctx, tier, ref_clip) for tier in tiers)
    tick(0, len(clips), "numeric block done")
    if options.executor == "ray":
        from .cluster import run_on_ray

        results = run_on_ray(
            args, clips, options.jobs, store, tick, options.address, worker_cpus=options.worker_cpus
        )
        return blocks, tuple(results)
    names = {c.name for c in clips}
    finished = {n: c for n, c in (store.load() if store else {}).items() if n in names}
    todo = [c for c in clips if c.name not in finished]

    def keep(result: ClipParity) -> None:
        if store:
            store.save(result)
        finished[result.clip] = result
        tick(len(finished), len(clips), result.clip)

    if options.jobs > 1 and todo:
        spawn = multiprocessing.get_context("spawn")  # forked torch threads can hang
        with cf.ProcessPoolExecutor(
            options.jobs, mp_context=spawn, initializer=_init_worker, initargs=args
        ) as pool:
            for result in pool.map(_run_clip, todo):
                keep(result)
    else:
        for clip in todo:
            keep(clip_parity(ctx, clip))
    return blocks, tuple(finished[c.name] for c in clips)


_WORKER: _Context | None = None


def _init_worker(*args) -> None:
    global _WORKER
    _WORKER = _Context(*args)


def _run_clip(clip: Clip) -> ClipParity:
    return clip_parity(_WORKER, clip)


def run_parity(
    bundle: Path,
    checkpoint: CheckpointSource,
    clips_dir: Path | Sequence[Path],
    options: ParityOptions = ParityOptions(),
    progress: Callable[[int, int, str], None] | None = None,
    store: ClipStore | None = None,
) -> ParityReport:
    """Measure every requested tier of ``bundle`` against the checkpoint's PyTorch model.

    ``clips_dir`` is one folder or several (clip sets, summarised one by one in ``report.sets``); the
    reference clip of the numeric block is the first set's first clip unless named. With ``store``, clips
    it holds are not measured again and each new one is saved there as it finishes (a resumable run).
    """
    if options.executor not in EXECUTORS:
        raise GraniteOnnxError(f"unknown executor {options.executor!r}; choose from {', '.join(EXECUTORS)}")
    _check_same_model(Path(bundle), checkpoint.path)
    quantised_gate = resolve_quantised_gate(options.quantised_gate, checkpoint)
    folders = [Path(clips_dir)] if isinstance(clips_dir, str | Path) else [Path(f) for f in clips_dir]
    clips = load_clip_sets(folders)
    ref_clip = (
        next((c for c in clips if c.name == options.reference_clip), None)
        if options.reference_clip
        else clips[0]
    )
    if ref_clip is None:
        raise GraniteOnnxError(f"--reference {options.reference_clip} is not among the clips in {clips_dir}")
    tiers = options.tiers or tuple(tier_label(t) for t in available_tiers(bundle))
    tick = progress or (lambda done, total, what: None)
    ctc = bundle_graph_names(Path(bundle)) == (CTC,)
    if ctc and options.executor != "local":
        raise GraniteOnnxError(
            "a CTC bundle's parity runs locally (--executor local): it is one graph per clip"
        )
    if ctc:  # one graph, per-frame labels (see parity/ctc.py)
        blocks, multi = run_ctc_parity(
            bundle, checkpoint, clips, ref_clip, tuple(tiers), options.threads, tick
        )
    else:
        blocks, multi = _run_autoregressive(bundle, checkpoint, clips, ref_clip, tiers, options, tick, store)
    sets = {
        name: {"folder": shown_path(folder), **summary, **_dataset_entry(folder)}
        for folder, (name, summary) in zip(folders, set_summaries(multi, tuple(tiers)).items(), strict=True)
    }
    return ParityReport(
        model={
            "path": str(checkpoint.path),
            "model_id": checkpoint.model_id,
            "revision": checkpoint.revision,
        },
        tiers=tuple(tiers),
        normalisation=NORMALISATION,
        max_new_tokens=options.max_new_tokens,
        wer_limit=options.wer_limit,
        single_clip=blocks,
        multi_clip_parity=multi,
        gates=gates(
            _in_set(multi, options.gate_set),
            blocks,
            tuple(t for t in tiers if t not in options.ungated),
            options.wer_limit,
            quantised_gate,
            options.wer_delta_limit,
        ),
        quantised_gate=quantised_gate,
        sets=sets,
        gate_set=options.gate_set,
        ungated=tuple(t for t in options.ungated if t in tiers),
        cpu=current_cpu().to_json(),
        kernel_saturation={t: tier_verdict(Path(bundle), _tier_arg(t)) for t in tiers if t != FP32},
        decode={} if ctc else decode_form(),  # the harness's pipelines keep SpeechPipeline's defaults
    )
