"""End to end: greedy decoding through the three ONNX graphs equals transformers ``generate``.

The tiny model's weights are scaled (see ``TinySpec``) so that this can fail: the transcript
depends on the audio, and the top-1/top-2 logit margin is far above the float32 disagreement
between onnxruntime and torch, so equal token ids are not luck.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLIPS, REPO

from granite_onnx.parity.reference import greedy
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import log_mel
from granite_onnx.runtime.pipeline import SpeechPipeline

MAX_NEW_TOKENS = 24
CLIP_FILES = sorted(p.name for p in CLIPS.glob("*.flac"))


@pytest.fixture(scope="module")
def pipeline(tiny_bundle) -> SpeechPipeline:
    return SpeechPipeline(tiny_bundle)


@pytest.fixture(scope="module")
def decoded(pipeline, tiny_model) -> dict[str, tuple]:
    """Per clip: (ONNX greedy result, PyTorch reference greedy result)."""
    results = {}
    for name in CLIP_FILES:
        features = log_mel(load_audio(CLIPS / name), pipeline.bundle.features)[None]
        embeds = pipeline.audio_embeds(features)
        input_ids = pipeline.prompt_ids(embeds.shape[1])
        results[name] = (
            pipeline.generate(input_ids, embeds, MAX_NEW_TOKENS),
            greedy(tiny_model, input_ids, features, MAX_NEW_TOKENS),
        )
    return results


@pytest.mark.parametrize("name", CLIP_FILES)
def test_greedy_onnx_token_ids_equal_transformers_generate(decoded, name):
    onnx_result, reference = decoded[name]
    assert onnx_result.token_ids == reference.token_ids
    assert len(onnx_result.token_ids) > 0


def test_greedy_margin_is_far_above_float_noise(decoded):
    """Median top-1/top-2 margin >= 0.5 and the smallest margin >= 100x the ONNX-vs-torch logit error."""
    smallest, medians = np.inf, []
    for onnx_result, reference in decoded.values():
        top2 = np.sort(reference.step_logits, axis=-1)[:, -2:]
        margins = top2[:, 1] - top2[:, 0]
        np.testing.assert_allclose(onnx_result.margins, margins, rtol=0, atol=1e-3)
        smallest = min(smallest, float(margins.min()))
        medians.append(float(np.median(margins)))
    print(f"tiny model greedy margin: min {smallest:.4f}, median of clip medians {np.median(medians):.3f}")
    assert np.median(medians) >= 0.5
    assert smallest >= 100 * 1e-5  # onnx-vs-torch logit error measured at ~1e-5 (test_export_graphs)


def test_transcript_depends_on_the_audio(decoded):
    distinct = {onnx_result.token_ids for onnx_result, _ in decoded.values()}
    assert len(distinct) >= 3, "every clip decodes alike: the audio path no longer reaches the LLM"


def test_runtime_prompt_equals_transformers_chat_template(pipeline, tiny_ckpt):
    """The torch-free prompt builder gives the ids transformers' tokenizer + chat template give."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    messages = [{"role": "user", "content": "<|audio|>can you transcribe the speech into a written format?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = tokenizer(text.replace("<|audio|>", "<|audio|>" * 9))["input_ids"]
    assert pipeline.prompt_ids(9)[0].tolist() == want


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def _cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    code = (BLOCK_TORCH if block_torch else "import sys\n") + (
        "from granite_onnx.cli import cli\n"
        "try:\n    cli.main(args=sys.argv[1:], prog_name='granite-onnx')\n"
        "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_transcribe_cli_runs_without_torch_on_every_real_clip(tiny_bundle, decoded, pipeline):
    """`granite-onnx transcribe` with torch and transformers made unimportable, all vendored clips."""
    paths = [str(CLIPS / name) for name in CLIP_FILES]
    proc = _cli(
        "transcribe",
        "--bundle",
        str(tiny_bundle),
        "--json",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        *paths,
        block_torch=True,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in records] == paths
    for record, name in zip(records, CLIP_FILES, strict=True):
        onnx_result, _ = decoded[name]
        assert tuple(record["token_ids"]) == onnx_result.token_ids
        assert record["text"] == pipeline.prompts.decode(list(onnx_result.token_ids))
        assert record["text"]


def test_transcribe_resamples_and_downmixes(pipeline, tmp_path):
    """A 44.1 kHz stereo copy of a clip decodes like the 16 kHz mono original (the front-end's job)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    mono = load_audio(CLIPS / "librispeech-61-70968-0000.flac")
    wide = resample_poly(mono, 441, 160).astype(np.float32)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([wide, wide], axis=1), 44100, subtype="FLOAT")
    back = pipeline.transcribe_file(path, MAX_NEW_TOKENS)
    orig = pipeline.transcribe_array(mono, MAX_NEW_TOKENS)
    assert back.audio_seconds == pytest.approx(orig.audio_seconds, abs=1e-3)
    shared = sum(1 for a, b in zip(back.token_ids, orig.token_ids, strict=False) if a == b)
    assert shared >= len(orig.token_ids) // 2
