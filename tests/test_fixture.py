"""The built-in tiny checkpoint: deterministic, loadable by transformers, shaped like the real model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from granite_onnx import fixtures
from granite_onnx.fixtures import AUDIO_TOKEN, TinySpec, tiny_checkpoint_dir, write_tiny_checkpoint

EXPECTED_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def _safetensors_header(path: Path) -> dict:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return json.loads(path.read_bytes()[8 : 8 + length])


def test_tiny_checkpoint_has_every_file_of_a_real_checkpoint(tiny_ckpt: Path):
    assert {p.name for p in tiny_ckpt.iterdir()} == EXPECTED_FILES


def test_tiny_checkpoint_is_byte_identical_across_two_writes(tiny_ckpt: Path, tmp_path: Path):
    again = write_tiny_checkpoint(tmp_path / "again")
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in tiny_ckpt.iterdir())
    for path in sorted(tiny_ckpt.iterdir()):
        assert (again / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs between writes"
        assert (again / path.name).stat().st_mode & 0o777 == 0o644
    # The parts most prone to drift, checked explicitly: safetensors metadata and JSON key order.
    assert _safetensors_header(tiny_ckpt / "model.safetensors")["__metadata__"] == {"format": "pt"}
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        keys = list(json.loads((tiny_ckpt / name).read_text()))
        assert keys == sorted(keys), name


@pytest.mark.parametrize("name", ["tiny-lora", "tiny-ctc", "tiny-plus"])
def test_every_family_fixture_is_byte_identical_across_two_writes(tmp_path: Path, name: str):
    """A path or a clock in any file (peft records the folder it saved an adapter to) would change every
    export id made from the fixture, and expected/<name>.json would not hold on a fresh machine."""
    from granite_onnx.fixtures import fixture_spec

    first = write_tiny_checkpoint(tmp_path / "first", fixture_spec(name))
    second = write_tiny_checkpoint(tmp_path / "second", fixture_spec(name))
    for path in sorted(first.iterdir()):
        assert (second / path.name).read_bytes() == path.read_bytes(), f"{name}: {path.name} differs"
    assert str(tmp_path) not in "".join(p.read_text() for p in first.glob("*.json"))


def test_write_leaves_nothing_behind_when_the_target_is_taken(tmp_path: Path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(OSError):
        write_tiny_checkpoint(taken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (taken / "keep.txt").read_text() == "mine"


def test_fixture_loads_with_transformers(tiny_ckpt: Path):
    import torch
    from transformers import AutoTokenizer, GraniteSpeechForConditionalGeneration

    model = GraniteSpeechForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    config = model.config
    assert model.dtype == torch.float32
    assert config.has_lora_adapter is False
    assert config.text_config.vocab_size == len(tokenizer) == TinySpec().vocab_size
    assert config.audio_token_index == config.text_config.vocab_size - 1
    assert tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == config.audio_token_index
    assert config.encoder_config.input_dim == 160
    assert config.projector_config.encoder_hidden_size == config.encoder_config.hidden_dim
    # Untied head, as in 4.1-2b: the head must not share storage with the embedding.
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_special_token_ids_and_generation_config(tiny_ckpt: Path):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    eos = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    pad = tokenizer.convert_tokens_to_ids("<|pad|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (eos, eos, pad)
    assert tokenizer.convert_tokens_to_ids(["<|start_of_role|>", "<|end_of_role|>"]) == [2, 3]
    assert tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == len(tokenizer) - 1
    generation = GenerationConfig.from_pretrained(tiny_ckpt)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (eos, eos, pad)


def test_chat_template_renders_the_granite_prompt(tiny_ckpt: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    chat = [{"role": "user", "content": "<|audio|>can you transcribe the speech into a written format?"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|start_of_role|>user<|end_of_role|><|audio|>can you transcribe the speech into a written format?"
        "<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"
    )
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids.count(tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)) == 1


def test_tokenizer_round_trips_the_clip_transcripts(tiny_ckpt: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    for text in fixtures.CLIP_TRANSCRIPTS:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
        assert len(ids) < len(text) / 2, "BPE should merge the training text well below one token per char"


def test_processor_files_carry_the_feature_extractor_settings(tiny_ckpt: Path):
    pre = json.loads((tiny_ckpt / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "GraniteSpeechFeatureExtractor"
    assert pre["processor_class"] == "GraniteSpeechProcessor"
    assert pre["melspec_kwargs"] == {
        "hop_length": 160,
        "n_fft": 512,
        "n_mels": 80,
        "sample_rate": 16000,
        "win_length": 400,
    }
    assert (pre["projector_window_size"], pre["projector_downsample_rate"]) == (15, 5)
    proc = json.loads((tiny_ckpt / "processor_config.json").read_text())
    assert proc["audio_token"] == AUDIO_TOKEN
    assert proc["processor_class"] == "GraniteSpeechProcessor"


def test_lm_head_gain_scales_only_the_head():
    import torch

    base, gained = TinySpec(lm_head_gain=1.0), TinySpec(lm_head_gain=4.0)
    ids = dict(zip(fixtures.LEADING_SPECIAL_TOKENS, range(4), strict=True))
    ids[AUDIO_TOKEN] = base.audio_token_index
    one = fixtures.build_model(base, fixtures.build_config(base, ids)).state_dict()
    four = fixtures.build_model(gained, fixtures.build_config(gained, ids)).state_dict()
    assert torch.equal(four["lm_head.weight"], 4.0 * one["lm_head.weight"])
    assert all(torch.equal(one[k], four[k]) for k in one if k != "lm_head.weight")


def test_cached_dir_is_named_by_spec_hash_and_built_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRANITE_ONNX_CACHE", str(tmp_path / "cache"))
    first = tiny_checkpoint_dir()
    assert first == tmp_path / "cache" / f"tiny-{TinySpec().short_hash()}"
    assert (first / "model.safetensors").is_file()

    def must_not_rebuild(*args, **kwargs):
        raise AssertionError("the cached checkpoint was rebuilt")

    monkeypatch.setattr(fixtures, "write_tiny_checkpoint", must_not_rebuild)
    assert tiny_checkpoint_dir() == first
    assert TinySpec(seed=1).short_hash() != TinySpec().short_hash()
    assert TinySpec(lm_head_gain=2.0).short_hash() != TinySpec().short_hash()
