"""Granite Speech log-mel features in numpy.

transformers' ``GraniteSpeechFeatureExtractor`` builds its features with
``torchaudio.transforms.MelSpectrogram``; torchaudio has no CPU build for the torch we pin, and the
ONNX runtime must not need torch at all. This module reproduces the same recipe with numpy so the
exported encoder sees the features the PyTorch model was trained and tested on:

1. power spectrogram: periodic Hann window of ``win_length`` zero-padded, centred, to ``n_fft``
   (what ``torch.stft`` does with a short window), frames centred on ``t * hop`` by reflect-padding
   ``n_fft // 2`` samples each side, one-sided FFT, ``|X|^2``;
2. HTK mel filterbank with no area normalisation, 0 Hz to ``sr / 2``
   (``torchaudio.functional.melscale_fbanks`` semantics);
3. ``log10(max(mel, 1e-10))``, floored at the utterance maximum minus 8, then ``/ 4 + 1``;
4. an odd frame count drops its last frame, and frame pairs are stacked: ``[frames // 2, 2 * n_mels]``.

The spectrum is computed in float64 and returned as float32; the float32 torch pipeline differs
from it by float32 rounding only (see ``tests/test_features.py`` for the measured bound).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from granite_onnx.errors import AudioError, BundleError
from granite_onnx.userfiles import json_kind, one_line, read_json_object

__all__ = [
    "FeatureConfig",
    "audio_token_count",
    "check_long_enough",
    "encoder_frame_count",
    "log_mel",
    "log_mel_batch",
    "mel_frame_count",
    "min_audio_samples",
]

_LOG_FLOOR = 1e-10  # clamp before log10, as the extractor's clip_(min=1e-10)
_DYNAMIC_RANGE = 8.0  # log10 units kept below the utterance maximum (80 dB)


def _shown(value: object) -> str:
    """A config value for a one-line message: short repr for scalars, the JSON kind for containers."""
    if isinstance(value, dict | list):
        return f"a JSON {json_kind(value)}"
    return one_line(repr(value), 60)


# Upper bounds far above any real extractor (4.1-2b: 16 kHz, n_fft 512, 80 mels): a corrupt config must
# fail here, not as a multi-GB window or filterbank allocation.
_UPPER = {
    "sampling_rate": 768_000,
    "n_fft": 1 << 16,
    "win_length": 1 << 16,
    "hop_length": 1 << 16,
    "n_mels": 1024,
    "projector_window_size": 4096,
    "projector_downsample_rate": 4096,
}


@dataclass(frozen=True)
class FeatureConfig:
    """The feature extractor's settings, named as ``GraniteSpeechFeatureExtractor.__init__`` names them.

    Frozen (hence hashable) so the filterbank and window can be cached per configuration.
    """

    sampling_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    projector_window_size: int = 15
    projector_downsample_rate: int = 5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{f.name} must be a positive integer, got {_shown(value)}")
            if value > _UPPER[f.name]:
                limit = _UPPER[f.name]
                raise ValueError(f"{f.name} {value} is beyond any speech front-end (at most {limit})")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Read a ``preprocessor_config.json`` dict.

        Only the extractor's ``__init__`` arguments are read, at top level, exactly as
        ``GraniteSpeechFeatureExtractor.from_pretrained`` does (it rebuilds its saved
        ``melspec_kwargs`` from those arguments, so that copy is ignored here too); missing keys
        take the extractor's defaults and unknown keys are ignored. A ``processor_config.json``
        dict (transformers >= 5 nests the extractor under ``"feature_extractor"``) is accepted too.
        """
        if not isinstance(d, dict):
            raise ValueError(f"feature config must be a JSON object, got {type(d).__name__}")
        nested = d.get("feature_extractor")
        if isinstance(nested, dict):
            d = nested
        kwargs: dict[str, int] = {}
        for f in fields(cls):
            if f.name in d:  # null is not "missing": the extractor would be built with None and fail
                value = d[f.name]
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                kwargs[f.name] = value
        return cls(**kwargs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], fix: str = "re-run `granite-onnx export` to rewrite the bundle"
    ) -> FeatureConfig:
        """Read ``preprocessor_config.json`` (or ``processor_config.json``) from disk.

        Raises:
            BundleError: the file is unreadable, not a JSON object, or holds a value the extractor
                cannot use (a sampling rate that is not a positive integer, ...); one line naming the
                file and ending in ``fix``.
        """
        path = Path(path)
        data = read_json_object(path, BundleError, fix)
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise BundleError(f"{path}: {one_line(exc)}: {fix}") from exc


# The window and the filterbank take their transcendental values from Python's ``math`` (the C library),
# one element at a time, not from numpy's vectorised ufuncs: numpy dispatches ``log10``, ``power`` and
# ``cos`` to other SIMD code on AVX-512 and on AVX2 CPUs, and the two differed in the last bit of the bank
# (measured: another sha256 under qemu -cpu Haswell), so frontend.onnx, which stores them, would not be
# byte-reproducible across CPUs. Every other step is IEEE arithmetic, the same everywhere.


@functools.lru_cache(maxsize=16)
def _window(cfg: FeatureConfig) -> np.ndarray:
    """Periodic Hann of ``win_length`` zero-padded centred into ``n_fft``, as ``torch.stft`` pads it."""
    cos = np.array([math.cos(2.0 * math.pi * i / cfg.win_length) for i in range(cfg.win_length)])
    hann = 0.5 - 0.5 * cos  # periodic: divide by N, not N-1
    window = np.zeros(cfg.n_fft, dtype=np.float64)
    left = (cfg.n_fft - cfg.win_length) // 2
    window[left : left + cfg.win_length] = hann
    window.flags.writeable = False
    return window


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.array([700.0 * (math.pow(10.0, m / 2595.0) - 1.0) for m in mel.tolist()])


@functools.lru_cache(maxsize=16)
def _mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` triangular HTK filters, no norm, 0 Hz .. sr // 2.

    Follows ``torchaudio.functional.melscale_fbanks(n_freqs, 0.0, sr // 2, n_mels, sr)``: bin
    frequencies are ``linspace(0, sr // 2, n_freqs)``, filter edges are evenly spaced in HTK mel,
    and each filter is ``max(0, min(rising, falling))`` slope with peak 1.
    """
    n_freqs = cfg.n_fft // 2 + 1
    f_max = float(cfg.sampling_rate // 2)  # torchaudio's default f_max: float(sample_rate // 2)
    all_freqs = np.linspace(0.0, cfg.sampling_rate // 2, n_freqs)
    m_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(f_max), cfg.n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb.flags.writeable = False
    return fb


def mel_frame_count(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames of a centred STFT: ``num_samples // hop + 1`` (before dropping an odd last frame)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return num_samples // cfg.hop_length + 1


def encoder_frame_count(num_samples: int, cfg: FeatureConfig) -> int:
    """Stacked frames the encoder receives: ``mel_frames // 2`` (an odd last frame is dropped)."""
    return mel_frame_count(num_samples, cfg) // 2


def audio_token_count(num_samples: int, cfg: FeatureConfig) -> int:
    """Audio tokens the projector emits, i.e. ``<|audio|>`` placeholders in the prompt.

    ``GraniteSpeechFeatureExtractor._get_num_audio_features``: the projector consumes encoder frames
    in blocks of ``projector_window_size`` (the last block padded) and emits
    ``projector_window_size // projector_downsample_rate`` tokens per block.
    30.0 s at 16 kHz: 3001 mel -> 1500 encoder frames -> 100 blocks -> 300 tokens.
    """
    enc = encoder_frame_count(num_samples, cfg)
    nblocks = -(-enc // cfg.projector_window_size)  # integer ceil
    return nblocks * (cfg.projector_window_size // cfg.projector_downsample_rate)


def _as_waveform(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    arr = np.asarray(audio)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D mono waveform, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        # The extractor refuses integer PCM too: its scale would silently change every feature.
        raise ValueError(f"{what} must be floating point (samples in [-1, 1]), got dtype {arr.dtype}")
    return arr


def min_audio_samples(cfg: FeatureConfig) -> int:
    """Fewest samples the extractor accepts: torch's reflect padding needs more than it pads (n_fft // 2)."""
    return cfg.n_fft // 2 + 1


def check_long_enough(samples: int, cfg: FeatureConfig) -> None:
    """One AudioError line for a waveform too short to reflect-pad (the numpy and the ONNX front-end)."""
    need = min_audio_samples(cfg)
    if samples < need:
        # torch's reflect padding needs more samples than it pads, so the reference refuses too.
        raise AudioError(
            f"audio is {samples} samples long; the feature extractor needs at least {need} "
            f"({1000 * need / cfg.sampling_rate:.0f} ms at {cfg.sampling_rate} Hz)"
        )


def _power_mel(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``[frames, n_mels]`` mel power of one float64 waveform (no log)."""
    pad = cfg.n_fft // 2
    check_long_enough(x.shape[0], cfg)
    padded = np.pad(x, pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length]
    spec = np.fft.rfft(frames * _window(cfg), axis=-1)
    power = spec.real**2 + spec.imag**2
    return power @ _mel_filterbank(cfg)


def _normalise_and_stack(mel: np.ndarray) -> np.ndarray:
    """Log-compress, floor at utterance max - 8, scale, drop an odd last frame, stack pairs."""
    logmel = np.log10(np.maximum(mel, _LOG_FLOOR))
    logmel = np.maximum(logmel, logmel.max() - _DYNAMIC_RANGE) / 4.0 + 1.0
    n = logmel.shape[0] - (logmel.shape[0] % 2)
    return logmel[:n].reshape(n // 2, 2 * logmel.shape[1]).astype(np.float32)


def log_mel(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Stacked log-mel of one utterance: float32 ``[encoder_frame_count(len(audio)), 2 * n_mels]``.

    ``audio`` is a 1-D float waveform already at ``cfg.sampling_rate``. Raises ``AudioError`` when
    it is too short to reflect-pad (at most ``n_fft // 2`` samples), as the reference would fail.
    """
    x = _as_waveform(audio).astype(np.float64, copy=False)
    return _normalise_and_stack(_power_mel(x, cfg))


def log_mel_batch(audios: list[np.ndarray], cfg: FeatureConfig) -> np.ndarray:
    """Stacked log-mel of several utterances: float32 ``[B, frames, 2 * n_mels]``.

    Like the extractor (``pad_sequence``), every waveform is first zero-padded to the longest, so
    all share the longest one's frame count; the log floor is still per utterance. Use
    ``audio_token_count`` on each original length for the number of valid audio tokens.
    """
    if len(audios) == 0:
        raise ValueError("log_mel_batch needs at least one waveform")
    waves = [_as_waveform(a, f"audios[{i}]") for i, a in enumerate(audios)]
    longest = max(w.shape[0] for w in waves)
    out = np.empty((len(waves), encoder_frame_count(longest, cfg), 2 * cfg.n_mels), dtype=np.float32)
    for i, w in enumerate(waves):
        x = np.zeros(longest, dtype=np.float64)
        x[: w.shape[0]] = w
        out[i] = _normalise_and_stack(_power_mel(x, cfg))
    return out
