"""User mistakes get one line on stderr, exit code 2, and no partial output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from granite_onnx.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_user_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def no_leftovers(folder: Path) -> list[str]:
    from granite_onnx.staging import TEMP_MARK

    return [p.name for p in folder.iterdir() if TEMP_MARK in p.name]


def _copy_ckpt(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_export_from_a_missing_folder(tmp_path):
    result = run("export", "--model-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out"))
    assert_user_error(result, "nope")
    assert not (tmp_path / "out").exists()


def test_export_from_a_folder_without_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = run("export", "--model-dir", str(tmp_path / "ckpt"), "--out-dir", str(tmp_path / "out"))
    assert_user_error(result, "config.json")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_model_that_is_not_granite_speech(tiny_ckpt, tmp_path):
    ckpt = _copy_ckpt(tiny_ckpt, tmp_path / "llama", model_type="llama")
    result = run("export", "--model-dir", str(ckpt), "--out-dir", str(tmp_path / "out"))
    assert_user_error(result, "llama")
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path) == []


def test_export_refuses_a_lora_adapter_it_cannot_merge(tiny_ckpt, tmp_path):
    ckpt = _copy_ckpt(tiny_ckpt, tmp_path / "lora", has_lora_adapter=True)
    config = {"peft_type": "LORA", "r": 64, "lora_alpha": 32, "target_modules": ["q_proj"], "use_dora": True}
    (ckpt / "adapter_config.json").write_text(json.dumps(config))
    (ckpt / "adapter_model.safetensors").write_bytes(b"")
    result = run("export", "--model-dir", str(ckpt), "--out-dir", str(tmp_path / "out"))
    assert_user_error(result, "use_dora is set")
    assert not (tmp_path / "out").exists()


def test_export_to_an_out_dir_that_is_a_file(tiny_ckpt, tmp_path):
    target = tmp_path / "bundle"
    target.write_text("not a folder")
    result = run("export", "--model-dir", str(tiny_ckpt), "--out-dir", str(target))
    assert_user_error(result, "is a file")
    assert target.read_text() == "not a folder"


def test_export_needs_exactly_one_model_source(tmp_path):
    result = run("export", "--out-dir", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "--model-dir" in result.stderr


def test_transcribe_unreadable_audio(tiny_bundle, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    result = run("transcribe", "--bundle", str(tiny_bundle), str(bad))
    assert_user_error(result, "notes.wav")


def test_transcribe_missing_audio_file(tiny_bundle, tmp_path):
    result = run("transcribe", "--bundle", str(tiny_bundle), str(tmp_path / "missing.flac"))
    assert_user_error(result, "missing.flac")


def test_transcribe_from_a_folder_that_is_not_a_bundle(tmp_path):
    result = run("transcribe", "--bundle", str(tmp_path), "clips/jfk.flac")
    assert_user_error(result, "config.json")


def test_transcribe_with_a_corrupt_graph(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = bundle / "decode_step.onnx_data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = run("transcribe", "--bundle", str(bundle), "clips/jfk.flac")
    assert_user_error(result, "decode_step.onnx")


def test_a_failed_export_leaves_the_previous_bundle_untouched(tiny_ckpt, tiny_bundle, tmp_path, monkeypatch):
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.export import stage

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = stage.export_graph, []

    def fail_on_second_graph(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises part-way through the stage
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "export_graph", fail_on_second_graph)
    with pytest.raises(KeyboardInterrupt):
        stage.export_bundle(CheckpointSource(tiny_ckpt), out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert no_leftovers(tmp_path) == []


def test_fixture_command_writes_a_loadable_checkpoint(tmp_path):
    from granite_onnx.checkpoint import validate_checkpoint

    result = run("fixture", str(tmp_path / "tiny"))
    assert result.exit_code == 0, result.output
    assert validate_checkpoint(tmp_path / "tiny")["model_type"] == "granite_speech"
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
    result = run("fixture", str(tmp_path / "plus"), "--model", "tiny-plus")
    assert result.exit_code == 0, result.output
    assert validate_checkpoint(tmp_path / "plus")["model_type"] == "granite_speech_plus"
    assert run("fixture", str(tmp_path / "lora"), "--model", "tiny-lora").exit_code == 0
    assert (tmp_path / "lora" / "adapter_config.json").is_file()


def test_export_cli_writes_the_bundle(tiny_ckpt, tmp_path):
    result = run("export", "--model-dir", str(tiny_ckpt), "--out-dir", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    for name in ("encoder", "prompt_encode", "decode_step"):
        assert (tmp_path / "out" / f"{name}.onnx").is_file()
        assert (tmp_path / "out" / f"{name}.onnx_data").is_file()
    assert no_leftovers(tmp_path) == []


def test_transcribe_audio_too_short_for_one_frame(tiny_bundle, tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "click.wav"
    sf.write(path, np.zeros(100, np.float32), 16000)
    result = run("transcribe", "--bundle", str(tiny_bundle), str(path))
    assert_user_error(result, "click.wav", "257")


def test_transcribe_audio_too_long_for_the_model_positions(tiny_bundle, tmp_path):
    """400 s of audio is 12,000 audio tokens: refused before any graph runs, naming the limit."""
    import numpy as np
    import soundfile as sf

    path = tmp_path / "long.flac"
    sf.write(path, np.random.default_rng(0).standard_normal(16000 * 400).astype(np.float32) * 0.1, 16000)
    result = run("transcribe", "--bundle", str(tiny_bundle), str(path))
    assert_user_error(result, "long.flac", "4096 positions")


@pytest.mark.parametrize("missing", ["transformers", "torch"])
@pytest.mark.parametrize("command", ["fixture", "export", "parity"])
def test_a_command_that_needs_the_export_extra_names_it_when_it_is_missing(
    command, missing, tiny_bundle, tiny_ckpt, tmp_path, monkeypatch
):
    """Installed without `[export]`, torch and transformers cannot be imported: one line naming the extra."""
    import sys

    for name in [m for m in sys.modules if m == missing or m.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # `import transformers` now raises ModuleNotFoundError
    args = {
        "fixture": ["fixture", str(tmp_path / "ckpt")],
        "export": ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(tmp_path / "b")],
        "parity": ["parity", "--bundle", str(tiny_bundle), "--model-dir", str(tiny_ckpt), "--clips", "clips"],
    }[command]
    result = run(*args)
    assert_user_error(result, f"granite-onnx {command}", missing, "pip install 'granite-onnx[export]'")
    assert not (tmp_path / "b").exists() and not (tmp_path / "ckpt").exists()
