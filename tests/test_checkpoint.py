"""Resolving and validating checkpoints: every bad folder fails with one actionable line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from granite_onnx import checkpoint
from granite_onnx.checkpoint import (
    PROCESSOR_FILES,
    CheckpointSource,
    copy_processor_files,
    load_reference_model,
    resolve_checkpoint,
    validate_checkpoint,
)
from granite_onnx.errors import CheckpointError, GraniteOnnxError


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _set_text_vocab(path: Path, vocab_size: int) -> None:
    data = json.loads(path.read_text())
    data["text_config"]["vocab_size"] = vocab_size
    path.write_text(json.dumps(data))


def _drop_audio_token(path: Path) -> None:
    data = json.loads(path.read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|audio|>"]
    path.write_text(json.dumps(data))


# (case id, how to break a copy of the fixture, a phrase the one-line message must contain)
BROKEN_FOLDERS: list[tuple[str, Callable[[Path], object], str]] = [
    ("folder-missing", lambda d: shutil.rmtree(d), "does not exist"),
    ("not-a-folder", lambda d: (shutil.rmtree(d), d.write_text("x")), "is not a folder"),
    ("config-missing", lambda d: (d / "config.json").unlink(), "config.json is missing"),
    ("config-not-json", lambda d: (d / "config.json").write_text("{model_type: "), "is not valid JSON"),
    ("config-not-object", lambda d: (d / "config.json").write_text("[1, 2]"), "model_type None"),
    ("wrong-model-type", lambda d: _edit_json(d / "config.json", model_type="llama"), "model_type 'llama'"),
    (
        "adapter-config",
        lambda d: (d / "adapter_config.json").write_text("{}"),
        "adapter_model.safetensors is missing",
    ),
    (
        "adapter-weights",
        lambda d: (d / "adapter_model.safetensors").write_bytes(b""),
        "but no adapter_config.json",
    ),
    ("no-weights", lambda d: (d / "model.safetensors").unlink(), "has no weights"),
    ("tokenizer-missing", lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    ("tokenizer-not-json", lambda d: (d / "tokenizer.json").write_text("nope"), "is not valid JSON"),
    ("audio-id-beyond-vocab", lambda d: _set_text_vocab(d / "config.json", 100), "outside the text vocab"),
    ("audio-id-disagrees", lambda d: _edit_json(d / "config.json", audio_token_index=5), "<|audio|> id 767"),
    ("tokenizer-lacks-audio", lambda d: _drop_audio_token(d / "tokenizer.json"), "has no <|audio|> token"),
]


@pytest.fixture
def ckpt_copy(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))


def test_fixture_checkpoint_is_valid(tiny_ckpt: Path):
    config = validate_checkpoint(tiny_ckpt)
    assert config["model_type"] == "granite_speech"
    assert config["audio_token_index"] == config["text_config"]["vocab_size"] - 1


@pytest.mark.parametrize(
    ("breakage", "phrase"), [case[1:] for case in BROKEN_FOLDERS], ids=[case[0] for case in BROKEN_FOLDERS]
)
def test_broken_checkpoint_fails_with_one_line_naming_the_problem(ckpt_copy: Path, breakage, phrase: str):
    breakage(ckpt_copy)
    with pytest.raises(CheckpointError) as info:
        validate_checkpoint(ckpt_copy)
    message = str(info.value)
    assert phrase in message
    assert "\n" not in message and "\r" not in message
    assert str(ckpt_copy) in message, "the message must name the file or folder"


def test_sharded_safetensors_count_as_weights(ckpt_copy: Path):
    (ckpt_copy / "model.safetensors").rename(ckpt_copy / "model-00001-of-00001.safetensors")
    assert validate_checkpoint(ckpt_copy)["model_type"] == "granite_speech"


def test_checkpoint_error_is_a_user_facing_error():
    assert issubclass(CheckpointError, GraniteOnnxError)


@pytest.mark.parametrize(("model_dir", "model"), [(None, None), (Path("x"), "tiny")])
def test_resolve_needs_exactly_one_source(model_dir, model):
    with pytest.raises(CheckpointError, match="exactly one of --model-dir"):
        resolve_checkpoint(model_dir, model)


def test_resolve_model_dir_is_taken_as_given(tiny_ckpt: Path):
    assert resolve_checkpoint(tiny_ckpt, None) == CheckpointSource(path=tiny_ckpt)


def test_resolve_tiny_builds_the_cached_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GRANITE_ONNX_CACHE", str(tmp_path))
    source = resolve_checkpoint(None, "tiny")
    assert source.is_fixture and source.model_id == "tiny" and source.revision is None
    assert source.path.parent == tmp_path
    validate_checkpoint(source.path)


def test_resolve_hub_id_downloads_only_what_export_needs(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return str(tiny_ckpt)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    source = resolve_checkpoint(None, "ibm-granite/granite-speech-4.1-2b", revision="main")
    assert source == CheckpointSource(tiny_ckpt, "ibm-granite/granite-speech-4.1-2b", "main", False)
    ((repo_id, revision, patterns),) = calls
    assert (repo_id, revision) == ("ibm-granite/granite-speech-4.1-2b", "main")
    needed = {"config.json", "model*.safetensors", "tokenizer.json", "preprocessor_config.json"}
    assert needed <= set(patterns)
    assert "*.bin" not in patterns
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(patterns)  # a 3.3 adapter is merged


def test_resolve_hub_id_offline_suggests_model_dir(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore lines")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(None, "ibm-granite/granite-speech-4.1-2b")
    assert "--model-dir" in str(info.value)
    assert "\n" not in str(info.value)


def test_copy_processor_files_copies_those_present(tiny_ckpt: Path, tmp_path: Path):
    copied = copy_processor_files(tiny_ckpt, tmp_path / "bundle")
    present = [name for name in PROCESSOR_FILES if (tiny_ckpt / name).exists()]
    assert copied == present
    assert "special_tokens_map.json" not in copied  # transformers 5 no longer writes it
    for name in copied:
        assert (tmp_path / "bundle" / name).read_bytes() == (tiny_ckpt / name).read_bytes()
        assert (tmp_path / "bundle" / name).stat().st_mode & 0o777 == 0o644


def test_load_reference_model_is_float32_eager_and_eval(tiny_ckpt: Path):
    import torch

    model = load_reference_model(tiny_ckpt)
    assert model.dtype == torch.float32
    assert not model.training
    assert model.config._attn_implementation == "eager"


def test_load_reference_model_validates_first(ckpt_copy: Path):
    (ckpt_copy / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is missing"):
        load_reference_model(ckpt_copy)


def test_checkpoint_module_does_not_import_torch():
    src = str(Path(checkpoint.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    code = "import sys, granite_onnx.checkpoint; sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
