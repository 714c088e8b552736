"""Read an audio file into the mono 16 kHz float32 waveform the feature front-end expects.

This is the runtime's only door to audio on disk, so it must work without torch (the ONNX path
installs no torch) and must turn every way a file can be unusable into one :class:`AudioError`
line that names the file. ``soundfile`` (libsndfile) reads wav/flac/ogg at any rate and channel
count; multichannel audio is averaged to mono and other rates are resampled with a polyphase
filter (``scipy.signal.resample_poly``), which is exact for rational rate ratios such as
44.1 kHz -> 16 kHz (160/441) and needs no torch.

A file whose every sample is below one 16-bit step is refused as silent: the model has nothing to
hear and would still emit tokens (the log-mel of digital silence is a constant the model was never
trained on), which looks like a transcript of nothing. Arrays built in memory are not checked; the
check belongs to reading a file, where silence is almost always a wrong file or a muted recording.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from granite_onnx.errors import AudioError
from granite_onnx.userfiles import exists, is_dir, one_line

__all__ = ["load_audio"]

_EXPECTED = "wav/flac/ogg expected"
# One step of 16-bit PCM: a file whose every sample is smaller than this holds no sound at any bit depth
# a recorder writes; integer PCM decodes to multiples of a step, so quiet speech is never below it.
SILENCE_LEVEL = 1.0 / 32768
# Bounds on what a header may declare. 768 kHz is the highest rate audio interfaces record; an hour is
# far more than the model's 4096 positions transcribe in one go (about 7 minutes), and bounds the memory
# one read takes.
MAX_SAMPLE_RATE = 768_000
MAX_SECONDS = 3600


def _check_header(name: str, sr: int, frames: int) -> None:
    """Refuse what the header declares before anything is allocated for it: a rate no audio has (a
    corrupt header; resampling from it needs a filter of ``rate`` taps) or more than MAX_SECONDS."""
    if not 1 <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"audio file {name} declares a sample rate of {sr} Hz, outside 1..{MAX_SAMPLE_RATE} Hz: the "
            "header is corrupt, re-encode the file (16 kHz mono is what the model hears)"
        )
    if frames > MAX_SECONDS * sr:
        raise AudioError(
            f"audio file {name} declares {frames} samples at {sr} Hz ({frames / sr / 3600:.1f} h), more than "
            f"the {MAX_SECONDS // 60} minutes read at once: split it into shorter pieces"
        )


def load_audio(path: str | os.PathLike[str], target_sr: int = 16000, *, min_samples: int = 0) -> np.ndarray:
    """Return the file's samples as a 1-D float32 array at ``target_sr`` Hz.

    Channels are averaged (the model hears one mono stream, as the reference pipeline does when
    it is handed a downmix). Samples keep soundfile's float scale (integer PCM maps to [-1, 1)).
    ``min_samples`` (at ``target_sr``) lets a caller that knows the feature extractor's minimum
    refuse a too-short file first: "too short" is the more useful message when a clip is both.

    Raises:
        AudioError: the file is missing, is not audio soundfile can decode, declares a sample rate
            above :data:`MAX_SAMPLE_RATE` or more than :data:`MAX_SECONDS`, holds no samples, holds
            non-finite samples, is shorter than ``min_samples``, or is silent (every sample below
            :data:`SILENCE_LEVEL`). The message is one line naming the file.
    """
    if isinstance(target_sr, bool) or not isinstance(target_sr, int) or target_sr <= 0:
        raise ValueError(f"target_sr must be a positive int, got {target_sr!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
        raise ValueError(f"min_samples must be a non-negative int, got {min_samples!r}")
    name = os.fspath(path)
    p = Path(name)
    if not exists(p):
        raise AudioError(f"audio file {name} does not exist")
    if is_dir(p):
        raise AudioError(f"audio file {name} is a directory, not an audio file ({_EXPECTED})")

    try:
        with sf.SoundFile(name) as fh:
            sr = fh.samplerate
            _check_header(name, sr, fh.frames)  # before read() allocates what the header claims
            data = fh.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # libsndfile raises LibsndfileError/RuntimeError/TypeError by format
        # LibsndfileError's str() repeats the path; its error_string is just libsndfile's reason.
        reason = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
        raise AudioError(
            f"audio file {name} could not be read as audio ({_EXPECTED}): {one_line(reason)}"
        ) from exc

    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio file {name} contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file {name} contains NaN or infinite samples")

    peak = float(np.max(np.abs(data)))

    # Mean over channels: float64 accumulation, then back to float32.
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64)

    if sr != target_sr:
        g = math.gcd(int(sr), target_sr)
        mono = resample_poly(mono, target_sr // g, int(sr) // g)
        if mono.shape[0] == 0:
            raise AudioError(f"audio file {name} is too short to resample from {sr} Hz to {target_sr} Hz")

    if mono.shape[0] < min_samples:
        raise AudioError(
            f"audio file {name} is too short: {mono.shape[0]} samples at {target_sr} Hz, the feature "
            f"extractor needs at least {min_samples} ({1000 * min_samples / target_sr:.0f} ms)"
        )
    if peak < SILENCE_LEVEL:
        raise AudioError(
            f"audio file {name} is silent (loudest sample {peak:.2g}, below one 16-bit step): "
            "check that it is the right file and that the recording was not muted"
        )
    out = np.ascontiguousarray(mono, dtype=np.float32)
    if not np.isfinite(out).all():  # float files far outside [-1, 1] overflow float32 once resampled
        raise AudioError(
            f"audio file {name} has samples too large for float32 after resampling (loudest {peak:.3g}): "
            "normalise it to [-1, 1]"
        )
    return out
