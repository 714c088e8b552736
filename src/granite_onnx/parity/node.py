"""Parity of the reference Node.js transcriber (``examples/node/transcribe.mjs``) with the Python runtime.

A consumer outside Python runs the bundle from its metadata alone: ``frontend.onnx`` for the features,
``prompt.prefix_ids + [audio] * n + prompt.suffix_ids`` for the prompt, its own greedy loop, and a
tokenizer's decode. This check runs that transcriber on every tier of a bundle and every clip, beside
:class:`~granite_onnx.runtime.pipeline.SpeechPipeline`, and requires the same prompt ids, the same token
ids and the same text, token for token. Both sides read the same 16-bit wav copy of each clip (the Node
side decodes PCM16 by dividing by 32768, as libsndfile does). Torch-free.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import GraniteOnnxError
from ..runtime.audio import load_audio
from ..runtime.bundle import Bundle, available_tiers
from ..runtime.ctc import CtcPipeline
from ..runtime.ctc_features import ctc_features
from ..runtime.features import audio_token_count, log_mel, min_audio_samples
from ..runtime.pipeline import SpeechPipeline
from ..userfiles import one_line
from .clips import Clip

NODE_DIR = Path(__file__).resolve().parents[3] / "examples" / "node"
SCRIPT = "transcribe.mjs"
INSTALL = "npm ci --ignore-scripts --prefix examples/node"
# The export gate of frontend.onnx. Tokens alone can miss a wrong PCM decode (a random-weight model may
# emit the same tokens), so the features Node fed its encoder are compared too.
FEATURE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class NodeRun:
    """One clip on one tier: what each side produced and whether they agree."""

    tier: str
    clip: str
    audio_tokens: int
    python_tokens: int
    node_tokens: int
    same_prompt: bool
    same_tokens: bool
    same_text: bool
    first_difference: int | None  # index of the first differing token id, None when the same
    features_max_abs_error: float  # Node's frontend.onnx output against the numpy front-end
    python_seconds: float
    node_seconds: float

    @property
    def agrees(self) -> bool:
        same_features = self.features_max_abs_error <= FEATURE_TOLERANCE
        return same_features and self.same_prompt and self.same_tokens and self.same_text


@dataclass(frozen=True)
class NodeAgreement:
    bundle: str
    node: str
    runs: tuple[NodeRun, ...]

    @property
    def agrees(self) -> bool:
        return all(r.agrees for r in self.runs)

    def to_json(self) -> dict:
        return {
            "bundle": self.bundle,
            "node": self.node,
            "agrees": self.agrees,
            "runs": [{**asdict(r), "agrees": r.agrees} for r in self.runs],
        }


def node_missing(node_dir: Path = NODE_DIR) -> str | None:
    """Why the Node transcriber cannot run here (no ``node``, or its packages not installed), else None."""
    if shutil.which("node") is None:
        return "node is not on PATH (Node.js 20 or later)"
    if not (node_dir / "node_modules" / "onnxruntime-node").is_dir():
        return f"the transcriber's packages are not installed: run `{INSTALL}`"
    return None


def wav_copy(clip: Path, out: Path, rate: int) -> Path:
    """A wav the Node transcriber reads: the clip's own 16-bit samples (channels kept: the transcriber
    downmixes) when it is 16-bit at ``rate``; otherwise the runtime's mono float32 waveform."""
    info = sf.info(str(clip))
    if info.samplerate == rate and info.subtype == "PCM_16":
        data, _ = sf.read(str(clip), dtype="int16", always_2d=True)
        sf.write(str(out), data, rate, subtype="PCM_16")
    else:
        sf.write(str(out), load_audio(clip, rate), rate, subtype="FLOAT")
    return out


def run_node(
    bundle: Path, wavs: Sequence[Path], tier: str | None, max_new_tokens: int, node_dir: Path = NODE_DIR
) -> list[dict]:
    """One transcriber process over ``wavs`` (its sessions open once): one parsed JSON line per file.
    Its one-line error becomes a GraniteOnnxError."""
    command = [
        "node",
        str(node_dir / SCRIPT),
        str(bundle),
        *map(str, wavs),
        "--max-new-tokens",
        str(max_new_tokens),
        "--features-dir",
        str(Path(wavs[0]).parent),
    ]
    if tier:
        command += ["--tier", tier]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or len(lines) != len(wavs):
        raise GraniteOnnxError(
            f"the Node transcriber failed on {bundle} (tier {tier or 'fp32'}): "
            f"{one_line(done.stderr.strip() or f'exit {done.returncode}', 300)}"
        )
    return [json.loads(line) for line in lines]


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(
    bundle: Path,
    clips: Sequence[Clip],
    tiers: Sequence[str | None] | None = None,
    max_new_tokens: int = 200,
    progress: Callable[[str], None] | None = None,
    node_dir: Path = NODE_DIR,
) -> NodeAgreement:
    """Every tier (default: all that resolve) on every clip, Python beside Node."""
    say = progress or (lambda _m: None)
    missing = node_missing(node_dir)
    if missing:
        raise GraniteOnnxError(f"cannot run the Node transcriber: {missing}")
    bundle = Path(bundle)
    tiers = available_tiers(bundle) if tiers is None else list(tiers)
    runs = []
    ctc = Bundle.open(bundle).is_ctc
    with tempfile.TemporaryDirectory(prefix="granite-node-") as tmp:
        rate = Bundle.open(bundle).features.sampling_rate
        wavs = [wav_copy(c.path, Path(tmp) / f"{i:03d}-{c.path.stem}.wav", rate) for i, c in enumerate(clips)]
        for tier in tiers:
            pipeline = CtcPipeline(bundle, tier=tier) if ctc else SpeechPipeline(bundle, tier=tier)
            cfg = pipeline.bundle.features
            node_results = run_node(bundle, wavs, tier, max_new_tokens, node_dir)
            for clip, wav, node in zip(clips, wavs, node_results, strict=True):
                audio = load_audio(
                    wav, cfg.sampling_rate, min_samples=min_audio_samples(getattr(cfg, "stft", cfg))
                )
                if ctc:  # no prompt: both sides' prompt ids are empty
                    python, prompt = pipeline.transcribe_array(audio), []
                    want = ctc_features(audio, cfg)[None]
                else:
                    python = pipeline.transcribe_array(audio, max_new_tokens)
                    # Python's prompt comes from the chat template, Node's from the metadata's id lists.
                    prompt = pipeline.prompt_ids(audio_token_count(len(audio), cfg))[0].tolist()
                    want = log_mel(audio, cfg)[None]
                tokens = list(python.token_ids)
                fed = np.fromfile(node["features_file"], np.float32).reshape(node["features_shape"])
                feature_error = float(np.max(np.abs(fed - want))) if fed.shape == want.shape else float("inf")
                run = NodeRun(
                    tier=tier or "fp32",
                    clip=clip.name,
                    audio_tokens=int(node["audio_token_count"]),
                    python_tokens=len(tokens),
                    node_tokens=len(node["token_ids"]),
                    same_prompt=node["prompt_ids"] == prompt,
                    same_tokens=node["token_ids"] == tokens,
                    same_text=node["text"] == python.text,
                    first_difference=first_difference(tokens, node["token_ids"]),
                    features_max_abs_error=feature_error,
                    python_seconds=round(python.seconds, 3),
                    node_seconds=round(float(node["seconds"]), 3),
                )
                say(
                    f"{run.tier:8s} {clip.name:34s} {run.python_tokens:4d} tokens  "
                    + (
                        "same features, prompt, tokens and text"
                        if run.agrees
                        else f"DIFFERENT ({_what(run)})"
                    )
                )
                runs.append(run)
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return NodeAgreement(str(bundle), version, tuple(runs))


def _what(run: NodeRun) -> str:
    checks = [("prompt", run.same_prompt), ("tokens", run.same_tokens), ("text", run.same_text)]
    features = f"features (by {run.features_max_abs_error:.2g})"
    checks.append((features, run.features_max_abs_error <= FEATURE_TOLERANCE))
    parts = [name for name, ok in checks if not ok]
    where = f", first at token {run.first_difference}" if run.first_difference is not None else ""
    return "differs in " + ", ".join(parts) + where
