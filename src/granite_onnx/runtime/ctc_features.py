"""Granite Speech 5.0 (CTC) features in numpy: log-mel + deltas, frame pairs stacked (320 per frame).

``GraniteSpeech5FeatureExtractor`` needs torchaudio, which has no build for the torch we pin, and the ONNX
runtime must not need torch at all. Its recipe, reproduced here on the power mel of :mod:`.features` (the
same STFT and HTK bank, so the same proof against torch covers it):

1. ``mel_frames = samples // hop``, rounded up to an even ``num_frames``; the waveform is right-padded with
   zeros to ``(num_frames - 1) * hop + 1`` samples when shorter, so a trailing half pair is filled, not
   dropped; the centred STFT's frames are then cut to ``num_frames``;
2. ``log10(max(mel, 1e-10))`` floored at the utterance maximum minus ``logmel_floor_db``, ``/ 4 + 1``;
3. deltas as ``torchaudio.functional.compute_deltas(win_length=3)``: ``(x[t+1] - x[t-1]) / 2`` with the
   edge frames repeated, appended on the mel axis (80 -> 160);
4. frame pairs stacked: ``[num_frames // 2, 4 * n_mels]``, each row ``[mel_t, delta_t, mel_t+1,
   delta_t+1]``; every row is valid (the attention mask is all ones for one utterance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..userfiles import one_line, read_json_object
from .features import FeatureConfig, _as_waveform, _power_mel, check_long_enough

__all__ = ["CtcFeatureConfig", "ctc_features", "ctc_features_batch", "ctc_frame_count"]

_LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class CtcFeatureConfig:
    """``GraniteSpeech5FeatureExtractor``'s settings: the STFT and bank of :class:`FeatureConfig`, plus the
    delta window and the floor."""

    stft: FeatureConfig = FeatureConfig()
    delta_win_length: int = 3
    logmel_floor_db: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.delta_win_length, bool) or not isinstance(self.delta_win_length, int):
            raise ValueError(
                f"delta_win_length must be an odd integer >= 3, got {self.delta_win_length!r:.40}"
            )
        if self.delta_win_length < 3 or self.delta_win_length % 2 == 0 or self.delta_win_length > 99:
            raise ValueError(
                f"delta_win_length must be an odd integer from 3 to 99, got {self.delta_win_length}"
            )
        floor = self.logmel_floor_db
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 < floor < 1000:
            raise ValueError(f"logmel_floor_db must be a positive number, got {floor!r:.40}")

    @property
    def sampling_rate(self) -> int:
        return self.stft.sampling_rate

    @property
    def hop_length(self) -> int:
        return self.stft.hop_length

    @classmethod
    def from_dict(cls, d: dict) -> CtcFeatureConfig:
        """A ``preprocessor_config.json`` dict, read as ``GraniteSpeech5FeatureExtractor.__init__`` reads it
        (``num_mel_bins``, not ``n_mels``); missing keys take its defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"feature config must be a JSON object, got {type(d).__name__}")
        nested = d.get("feature_extractor") or d.get("audio_processor")
        d = nested if isinstance(nested, dict) else d
        stft = {k: d[k] for k in ("sampling_rate", "n_fft", "win_length", "hop_length") if k in d}
        if "num_mel_bins" in d:
            stft["n_mels"] = d["num_mel_bins"]
        extra = {k: d[k] for k in ("delta_win_length", "logmel_floor_db") if k in d}
        return cls(FeatureConfig(**stft), **extra)

    @classmethod
    def from_file(cls, path: Path, fix: str) -> CtcFeatureConfig:
        data = read_json_object(Path(path), BundleError, fix)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{path}: {one_line(exc)}: {fix}") from exc


def ctc_frame_count(num_samples: int, cfg: CtcFeatureConfig) -> int:
    """Rows of :func:`ctc_features` for ``num_samples`` samples: ``ceil((samples // hop) / 2)``."""
    return math.ceil((num_samples // cfg.hop_length) / 2)


def _deltas(x: np.ndarray, win_length: int) -> np.ndarray:
    """``torchaudio.functional.compute_deltas`` along axis 0 (time), edges repeated."""
    n = (win_length - 1) // 2
    denom = n * (n + 1) * (2 * n + 1) / 3
    padded = np.pad(x, ((n, n), (0, 0)), mode="edge")
    total = np.zeros_like(x)
    for k in range(1, n + 1):
        total += k * (padded[n + k : n + k + len(x)] - padded[n - k : n - k + len(x)])
    return total / denom


def ctc_features(audio: np.ndarray, cfg: CtcFeatureConfig) -> np.ndarray:
    """float32 ``[ctc_frame_count(len(audio)), 4 * n_mels]`` features of one utterance.

    Raises ``AudioError`` when the audio is too short for the STFT's reflect padding."""
    x = _as_waveform(audio).astype(np.float64, copy=False)
    check_long_enough(len(x), cfg.stft)
    return _features(x, cfg)


def ctc_features_batch(audios: list[np.ndarray], cfg: CtcFeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """features [B, rows, 4 * n_mels] and attention_mask [B, rows] of several utterances, as the extractor
    makes a batch: each zero-padded to the longest, framed by that length, floored per row; row ``r`` of
    utterance ``b`` valid when ``r < ctc_frame_count(len(audios[b]))``."""
    waves = [_as_waveform(a).astype(np.float64, copy=False) for a in audios]
    check_long_enough(min(len(w) for w in waves), cfg.stft)
    longest = max(len(w) for w in waves)
    rows = [_features(np.pad(w, (0, longest - len(w))), cfg) for w in waves]
    mask = np.zeros((len(waves), rows[0].shape[0]), np.int64)
    for b, w in enumerate(waves):
        mask[b, : ctc_frame_count(len(w), cfg)] = 1
    return np.stack(rows), mask


def _features(x: np.ndarray, cfg: CtcFeatureConfig) -> np.ndarray:
    hop = cfg.hop_length
    num_frames = 2 * ctc_frame_count(len(x), cfg)
    needed = (num_frames - 1) * hop + 1
    if len(x) < needed:
        x = np.pad(x, (0, needed - len(x)))
    mel = _power_mel(x, cfg.stft)[:num_frames]
    logmel = np.log10(np.maximum(mel, _LOG_FLOOR))
    logmel = np.maximum(logmel, logmel.max() - cfg.logmel_floor_db) / 4.0 + 1.0
    both = np.concatenate([logmel, _deltas(logmel, cfg.delta_win_length)], axis=1)  # [frames, 2 * n_mels]
    return both.reshape(num_frames // 2, 2 * both.shape[1]).astype(np.float32)
