"""The export gate of ``frontend.onnx``: onnxruntime against the numpy recipe of ``runtime/features.py``.

The graph must give the features the numpy front-end gives (max abs error at most ``TOLERANCE``) and
exactly its audio token counts, on every clip of the ``--clips`` folder and on signals chosen for the
places front-ends break: noise with an even and an odd mel frame count (the dropped last frame), a
padded batch of a loud and a quiet utterance (the floor is per utterance, not per batch), and the
257-sample minimum (reflect padding needs one sample more than it pads). Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GraniteOnnxError
from ..parity.clips import load_clips
from ..runtime.audio import load_audio
from ..runtime.ctc_features import CtcFeatureConfig, ctc_features_batch
from ..runtime.features import FeatureConfig, audio_token_count, log_mel_batch, min_audio_samples
from ..runtime.frontend import OnnxFrontend
from ..userfiles import is_dir

TOLERANCE = 1e-4


class FrontendCheckError(GraniteOnnxError):
    """frontend.onnx disagrees with the numpy front-end."""


@dataclass(frozen=True)
class FrontendCase:
    """One input of the gate: its label, how many samples (per utterance) and the measured error."""

    name: str
    samples: tuple[int, ...]
    frames: int
    max_abs_error: float
    token_counts: tuple[int, ...]  # a CTC front-end's: the valid rows of each utterance's attention_mask


@dataclass(frozen=True)
class FrontendCheck:
    tolerance: float
    cases: tuple[FrontendCase, ...]
    clips_folder: str | None
    clips_note: str = ""
    compute: str = field(default="float64")

    @property
    def worst(self) -> float:
        return max(c.max_abs_error for c in self.cases)

    def to_json(self) -> dict:
        return {**asdict(self), "worst": self.worst}


def _stft(cfg: FeatureConfig | CtcFeatureConfig) -> FeatureConfig:
    return cfg.stft if isinstance(cfg, CtcFeatureConfig) else cfg


def synthetic_cases(cfg: FeatureConfig | CtcFeatureConfig, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Named waveform lists (each list is one batch) that are not speech but break front-ends."""
    cfg = _stft(cfg)
    rng = np.random.default_rng(seed)
    sr, hop = cfg.sampling_rate, cfg.hop_length
    even = (sr // hop) * hop - hop  # L // hop + 1 mel frames: even here, odd one hop later
    noise = lambda n, level: (level * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    return {
        "noise, even mel frames": [noise(even, 0.1)],
        "noise, odd mel frames": [noise(even + hop, 0.1)],
        "noise, odd length": [noise(even + hop + 37, 0.1)],
        "padded batch, loud + quiet": [noise(3 * sr // 2, 0.3), noise(sr // 2 + 11, 0.001)],
        f"minimum ({min_audio_samples(cfg)} samples)": [noise(min_audio_samples(cfg), 0.1)],
    }


def clip_cases(
    folder: Path | None, cfg: FeatureConfig | CtcFeatureConfig
) -> tuple[dict[str, list[np.ndarray]], str]:
    """Every clip of ``folder`` (one batch each), or none with a note saying why (loudly: reported)."""
    cfg = _stft(cfg)
    if folder is None:
        return {}, "no clips folder given: checked on synthetic signals only"
    if not is_dir(folder):
        return {}, f"clips folder {folder} not found: checked on synthetic signals only"
    clips = load_clips(Path(folder))
    waves = {
        c.name: [load_audio(c.path, cfg.sampling_rate, min_samples=min_audio_samples(cfg))] for c in clips
    }
    return waves, ""


def _measure_ctc(frontend: OnnxFrontend, name: str, waves: list[np.ndarray]) -> FrontendCase:
    """The CTC front-end: features against ctc_features_batch, the attention_mask exactly."""
    want, want_mask = ctc_features_batch(waves, frontend.cfg)
    got, mask = frontend(waves)
    if got.shape != want.shape:
        raise FrontendCheckError(
            f"frontend.onnx on {name}: features of shape {got.shape}, the numpy front-end {want.shape}"
        )
    if not np.array_equal(mask, want_mask):
        raise FrontendCheckError(
            f"frontend.onnx on {name}: attention_mask keeps {mask.sum(1).tolist()} rows, the numpy front-end "
            f"{want_mask.sum(1).tolist()}"
        )
    error = float(np.max(np.abs(got - want))) if want.size else 0.0
    valid = tuple(int(v) for v in want_mask.sum(1))
    return FrontendCase(name, tuple(len(w) for w in waves), int(want.shape[1]), error, valid)


def measure(frontend: OnnxFrontend, name: str, waves: list[np.ndarray]) -> FrontendCase:
    """One batch through the graph and through numpy; a wrong shape or token count is a failure."""
    cfg = frontend.cfg
    if isinstance(cfg, CtcFeatureConfig):
        return _measure_ctc(frontend, name, waves)
    want = log_mel_batch(waves, cfg)
    got, counts = frontend(waves)
    if got.shape != want.shape:
        raise FrontendCheckError(
            f"frontend.onnx on {name}: features of shape {got.shape}, the numpy front-end {want.shape}"
        )
    expected = tuple(audio_token_count(len(w), cfg) for w in waves)
    if tuple(int(c) for c in counts) != expected:
        raise FrontendCheckError(
            f"frontend.onnx on {name}: audio_token_count {counts.tolist()}, "
            f"the numpy front-end {list(expected)}"
        )
    error = float(np.max(np.abs(got - want))) if want.size else 0.0
    return FrontendCase(name, tuple(len(w) for w in waves), int(want.shape[1]), error, expected)


def check_frontend(
    path: Path,
    cfg: FeatureConfig | CtcFeatureConfig,
    clips: Path | None,
    tolerance: float = TOLERANCE,
    compute: str = "float64",
) -> FrontendCheck:
    """Gate ``path`` (a written frontend.onnx); raises FrontendCheckError on the first case over
    ``tolerance``, else returns every case's measured error."""
    frontend = OnnxFrontend(path, cfg)
    clip_waves, note = clip_cases(clips, cfg)
    cases = []
    for name, waves in {**clip_waves, **synthetic_cases(cfg)}.items():
        case = measure(frontend, name, waves)
        if not case.max_abs_error <= tolerance:
            raise FrontendCheckError(
                f"frontend.onnx on {name}: features differ from the numpy front-end by "
                f"{case.max_abs_error:.3g} "
                f"(gate {tolerance:g})"
            )
        cases.append(case)
    return FrontendCheck(tolerance, tuple(cases), None if clips is None else str(clips), note, compute)
