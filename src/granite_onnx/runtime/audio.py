"""Read an audio file into the mono 16 kHz float32 waveform the feature front-end expects.

This is the runtime's only door to audio on disk, so it must work without torch (the ONNX path
installs no torch) and must turn every way a file can be unusable into one :class:`AudioError`
line that names the file. ``soundfile`` (libsndfile) reads wav/flac/ogg at any rate and channel
count; multichannel audio is averaged to mono and other rates are resampled with a polyphase
filter (``scipy.signal.resample_poly``), which is exact for rational rate ratios such as
44.1 kHz -> 16 kHz (160/441) and needs no torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from granite_onnx.errors import AudioError

__all__ = ["load_audio"]

_EXPECTED = "wav/flac/ogg expected"


def _one_line(text: object, limit: int = 200) -> str:
    """Collapse a library message to one short line: the CLI prints AudioError as a single line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_audio(path: str | os.PathLike[str], target_sr: int = 16000) -> np.ndarray:
    """Return the file's samples as a 1-D float32 array at ``target_sr`` Hz.

    Channels are averaged (the model hears one mono stream, as the reference pipeline does when
    it is handed a downmix). Samples keep soundfile's float scale (integer PCM maps to [-1, 1)).

    Raises:
        AudioError: the file is missing, is not audio soundfile can decode, holds no samples, or
            holds non-finite samples. The message is one line naming the file.
    """
    if isinstance(target_sr, bool) or not isinstance(target_sr, int) or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive int, got {target_sr!r}")
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise AudioError(f"audio file {name} does not exist")
    if p.is_dir():
        raise AudioError(f"audio file {name} is a directory, not an audio file ({_EXPECTED})")

    try:
        data, sr = sf.read(name, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises LibsndfileError/RuntimeError/TypeError by format
        # LibsndfileError's str() repeats the path; its error_string is just libsndfile's reason.
        reason = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
        raise AudioError(
            f"audio file {name} could not be read as audio ({_EXPECTED}): {_one_line(reason)}"
        ) from exc

    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio file {name} contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {name} contains NaN or infinite samples")

    # Mean over channels: float64 accumulation, then back to float32.
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64)

    if sr != target_sr:
        g = math.gcd(int(sr), target_sr)
        mono = resample_poly(mono, target_sr // g, int(sr) // g)
        if mono.shape[0] == 0:
            raise AudioError(f"audio file {name} is too short to resample from {sr} Hz to {target_sr} Hz")

    return np.ascontiguousarray(mono, dtype=np.float32)
