"""The prompt without a template engine: ``prefix + [audio] * n + suffix`` is the chat template's rendering.

The metadata records the ids; this proves the equality for every ``n`` from 0 to the largest the model's
positions allow, with the tokenizer itself (one batch encode: about 3 s per checkpoint), on the tiny
checkpoint, the trained fixture, and a template that puts the audio after the instruction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from granite_onnx.checkpoint import TRAINED_DIR
from granite_onnx.metadata import METADATA_FILE
from granite_onnx.runtime.bundle import Bundle
from granite_onnx.runtime.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from granite_onnx.specs import ModelDims


def _assert_parts_hold_for_every_length(folder: Path, instruction: str = DEFAULT_INSTRUCTION) -> int:
    builder = PromptBuilder(folder)
    parts = builder.parts(instruction)
    positions = ModelDims.from_file(folder / "config.json").max_positions
    largest = parts.max_audio_tokens(positions)
    assert largest > 1000  # the positions allow a long prompt: the check covers real lengths
    text = builder.render(instruction)
    placeholder = builder.audio_placeholder
    texts = [text.replace(placeholder, placeholder * n) for n in range(largest + 1)]
    encoded = builder.tokenizer.encode_batch(texts)
    wrong = [n for n, e in enumerate(encoded) if e.ids != parts.ids(n)]
    assert wrong == []
    assert len(parts.ids(largest)) == positions
    return largest


def test_tiny_checkpoint(tiny_ckpt: Path):
    _assert_parts_hold_for_every_length(tiny_ckpt)


def test_trained_fixture():
    _assert_parts_hold_for_every_length(TRAINED_DIR)


def test_another_instruction(tiny_ckpt: Path):
    _assert_parts_hold_for_every_length(tiny_ckpt, "transcribe this, please.")


def test_a_template_with_the_audio_after_the_instruction(tiny_ckpt: Path, tmp_path: Path):
    """The split is found by id, not assumed at the start of the user turn."""
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    template = (folder / "chat_template.jinja").read_text()
    flipped = template.replace("message['content']", "message['content'][9:] + message['content'][:9]")
    assert flipped != template
    (folder / "chat_template.jinja").write_text(flipped)
    builder = PromptBuilder(folder)
    assert f"{DEFAULT_INSTRUCTION}{builder.audio_placeholder}<|end_of_text|>" in builder.render()
    assert len(builder.parts().suffix_ids) < len(PromptBuilder(tiny_ckpt).parts().suffix_ids)
    _assert_parts_hold_for_every_length(folder)


def test_the_metadata_records_the_parts_eos_and_positions(measured_bundle: Path):
    meta = json.loads((measured_bundle / METADATA_FILE).read_text())
    prompt, audio = meta["prompt"], meta["audio"]
    parts = PromptBuilder(measured_bundle).parts()
    bundle = Bundle.open(measured_bundle)
    assert prompt["prefix_ids"] == list(parts.prefix_ids)
    assert prompt["suffix_ids"] == list(parts.suffix_ids)
    assert prompt["audio_token_id"] == parts.audio_token_id == bundle.dims.audio_token_id
    assert prompt["eos_token_ids"] == list(bundle.eos_token_ids) and prompt["eos_token_ids"]
    assert prompt["max_positions"] == bundle.dims.max_positions
    assert prompt["max_audio_tokens"] == parts.max_audio_tokens(bundle.dims.max_positions)
    assert audio == {
        "frontend": "frontend.onnx",
        "sampling_rate": 16000,
        "min_samples": 257,
        "channels": "mono: average the channels first",
        "pcm16_scale": 32768,
        "hop_length": 160,
        "n_mels": 80,
        "feature_dim": 160,
    }
    # What a consumer builds from the metadata alone is what the runtime feeds prompt_encode.
    for n in (0, 1, 111, prompt["max_audio_tokens"]):
        ids = prompt["prefix_ids"] + [prompt["audio_token_id"]] * n + prompt["suffix_ids"]
        assert ids == PromptBuilder(measured_bundle).input_ids(n)


def test_a_tokenizer_without_the_placeholder_is_one_clear_error(tiny_ckpt: Path, tmp_path: Path):
    from granite_onnx.errors import BundleError

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    config["audio_token"] = "<|not-a-token|>"
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"has no token <\|not-a-token\|>"):
        PromptBuilder(folder).parts()
