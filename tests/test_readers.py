"""Every reader of a user-supplied file fails with one line that names the file and the fix.

Audio files, bundle configs, clips manifests, checkpoint weights and stage reports are all read from
disk a user controls; a corrupt, partial or hand-edited file must end as a GraniteOnnxError (the CLI
prints ``error: <message>`` and exits 2), never a traceback from deep inside numpy or a dict lookup.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from granite_onnx.checkpoint import validate_checkpoint
from granite_onnx.cli import cli
from granite_onnx.errors import AudioError, BundleError, CheckpointError, GraniteOnnxError
from granite_onnx.metadata.collect import (
    describe_files,
    describe_source,
    describe_toolchain,
    read_json,
    read_optional_json,
    token_ids,
)
from granite_onnx.parity.clips import load_clips
from granite_onnx.runtime.audio import SILENCE_LEVEL, load_audio
from granite_onnx.runtime.bundle import Bundle, tier_fp32_graphs
from granite_onnx.runtime.features import FeatureConfig
from granite_onnx.runtime.prompt import PromptBuilder
from granite_onnx.specs import GRAPH_NAMES

BUNDLE_CONFIGS = ("config.json", "generation_config.json", "preprocessor_config.json")


def assert_one_line(exc: BaseException, *fragments: str) -> str:
    """The message is one line without surrounding blanks and holds every fragment (file name, fix)."""
    message = str(exc)
    assert "\n" not in message and "\r" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def raises_one_line(error: type[Exception], call, *fragments: str) -> str:
    with pytest.raises(error) as info:
        call()
    return assert_one_line(info.value, *fragments)


def make_bundle(tiny_ckpt: Path, folder: Path) -> Path:
    """The files Bundle.open reads, copied from the tiny checkpoint, beside empty graph placeholders:
    Bundle.open only checks that the graphs exist, so these tests need no export."""
    folder.mkdir(parents=True)
    for name in (*BUNDLE_CONFIGS, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(tiny_ckpt / name, folder / name)
    for name in GRAPH_NAMES:
        (folder / f"{name}.onnx").touch()
    return folder


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def bundle(tiny_ckpt: Path, tmp_path: Path) -> Path:
    return make_bundle(tiny_ckpt, tmp_path / "bundle")


def cli_user_error(*args: str):
    """Run the CLI; assert the one-line ``error:`` contract and return that line."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- audio ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "level"), [("FLOAT", 0.0), ("PCM_24", 1e-6), ("FLOAT", SILENCE_LEVEL * 0.99)]
)
def test_silent_audio_file_is_refused(tmp_path: Path, subtype: str, level: float) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.full((16000, 2), level, np.float32), 16000, subtype=subtype)
    raises_one_line(AudioError, lambda: load_audio(path), str(path), "is silent (")


def test_one_16bit_step_is_not_silence(tmp_path: Path) -> None:
    """The quietest non-zero 16-bit file is sound: the threshold is exactly one step."""
    path = tmp_path / "quiet.wav"
    x = np.zeros(16000, np.float32)
    x[100] = SILENCE_LEVEL
    sf.write(path, x, 16000, subtype="PCM_16")
    assert np.abs(load_audio(path)).max() == pytest.approx(SILENCE_LEVEL)


def test_too_short_is_reported_before_silent(tmp_path: Path) -> None:
    """A 100-sample click of zeros is both; "too short" names the limit the user must meet."""
    path = tmp_path / "click.wav"
    sf.write(path, np.zeros(100, np.float32), 16000)
    raises_one_line(AudioError, lambda: load_audio(path, min_samples=257), str(path), "too short", "257")


def test_samples_that_overflow_float32_when_resampled_are_refused(tmp_path: Path) -> None:
    """A float file near float32's maximum rings past it in the resampling filter: inf, not audio."""
    path = tmp_path / "loud.wav"
    x = np.where((np.arange(4410) // 100) % 2, 3.3e38, -3.3e38).astype(np.float32)
    sf.write(path, x, 44100, subtype="FLOAT")
    raises_one_line(AudioError, lambda: load_audio(path), str(path), "too large", "normalise")


def test_transcribe_cli_refuses_a_silent_file(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "muted.flac"
    sf.write(path, np.zeros(32000, np.float32), 16000)
    line = cli_user_error("transcribe", "--bundle", str(tiny_bundle), str(path))
    assert "muted.flac" in line and "silent" in line


# --- bundle configs ------------------------------------------------------------------------------------

BAD_SAMPLE_RATES = ["16000", None, True, -16000, 0, 16000.5, float("nan"), float("inf"), [16000], {}]


@pytest.mark.parametrize("value", BAD_SAMPLE_RATES, ids=repr)
def test_preprocessor_sampling_rate_that_is_not_a_number(bundle: Path, value) -> None:
    pre = bundle / "preprocessor_config.json"
    edit_json(pre, lambda d: d.update(sampling_rate=value))  # json writes NaN/Infinity literals
    raises_one_line(
        BundleError, lambda: Bundle.open(bundle), str(pre), "sampling_rate", "granite-onnx export"
    )


@pytest.mark.parametrize(
    "key",
    ["n_fft", "win_length", "hop_length", "n_mels", "projector_window_size", "projector_downsample_rate"],
)
def test_preprocessor_ints_that_are_not_ints(bundle: Path, key: str) -> None:
    pre = bundle / "preprocessor_config.json"
    edit_json(pre, lambda d: d.update({key: "many"}))
    raises_one_line(BundleError, lambda: Bundle.open(bundle), str(pre), key)


@pytest.mark.parametrize("name", BUNDLE_CONFIGS)
@pytest.mark.parametrize(("text", "phrase"), [("{oops", "is not valid JSON"), ("[1, 2]", "JSON array")])
def test_bundle_config_that_is_not_a_json_object(bundle: Path, name: str, text: str, phrase: str) -> None:
    (bundle / name).write_text(text)
    raises_one_line(
        BundleError, lambda: Bundle.open(bundle), str(bundle / name), phrase, "granite-onnx export"
    )


def test_bundle_config_that_is_not_utf8(bundle: Path) -> None:
    (bundle / "config.json").write_bytes(b'{"a": "\xff"}')
    raises_one_line(BundleError, lambda: Bundle.open(bundle), "config.json", "not UTF-8")


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (lambda d: d.update(text_config=[1]), "text_config must be an object"),
        (lambda d: d.pop("text_config"), "text_config must be an object"),
        (lambda d: d["text_config"].update(num_hidden_layers="2"), "text_config.num_hidden_layers"),
        (lambda d: d["text_config"].pop("hidden_size"), "text_config.hidden_size is missing"),
        (lambda d: d["text_config"].update(num_key_value_heads=-2), "text_config.num_key_value_heads"),
        (lambda d: d.update(encoder_config="160"), "encoder_config must be an object"),
        (lambda d: d.update(audio_token_index=10**6), "audio_token_index"),
        (lambda d: d.update(audio_token_index="767"), "audio_token_index"),
    ],
)
def test_bundle_config_with_wrong_types(bundle: Path, change, phrase: str) -> None:
    edit_json(bundle / "config.json", change)
    raises_one_line(BundleError, lambda: Bundle.open(bundle), str(bundle / "config.json"), phrase)


@pytest.mark.parametrize("value", ["0", [0, "1"], True, -1, {"id": 0}])
def test_generation_config_eos_that_is_not_a_token_id(bundle: Path, value) -> None:
    gen = bundle / "generation_config.json"
    edit_json(gen, lambda d: d.update(eos_token_id=value))
    raises_one_line(BundleError, lambda: Bundle.open(bundle), str(gen), "eos_token_id")


def test_text_config_eos_is_named_when_there_is_no_generation_config(bundle: Path) -> None:
    (bundle / "generation_config.json").unlink()
    edit_json(bundle / "config.json", lambda d: d["text_config"].update(eos_token_id="eos"))
    raises_one_line(BundleError, lambda: Bundle.open(bundle), str(bundle / "config.json"), "eos_token_id")


def test_valid_copy_still_opens(bundle: Path) -> None:
    opened = Bundle.open(bundle)
    assert opened.eos_token_ids == (0,) and opened.features == FeatureConfig(projector_window_size=15)


def test_feature_config_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "preprocessor_config.json"
    path.write_text('{"sampling_rate": "sixteen thousand"}')
    raises_one_line(BundleError, lambda: FeatureConfig.from_file(path), str(path), "sampling_rate")


@pytest.mark.parametrize("report", ['{"fp32_graphs": 5}', '{"fp32_graphs": [["encoder"]]}', "[]", "\xff"])
def test_unreadable_tier_declarations_are_ignored(bundle: Path, report: str) -> None:
    """A tier without a readable declaration must have all three graphs of its own (never a crash)."""
    (bundle / "quantise_int8.json").write_text(report, encoding="latin-1")
    assert tier_fp32_graphs(bundle, "int8") == ()


def test_prompt_files_that_are_not_json_objects(bundle: Path) -> None:
    (bundle / "tokenizer_config.json").write_text("[]")
    (bundle / "chat_template.jinja").unlink()
    raises_one_line(BundleError, lambda: PromptBuilder(bundle).chat_template, "tokenizer_config.json")
    (bundle / "processor_config.json").write_text('{"audio_token": 7}')
    raises_one_line(BundleError, lambda: PromptBuilder(bundle).audio_placeholder, "processor_config.json")
    (bundle / "tokenizer.json").write_text("{}")
    raises_one_line(BundleError, lambda: PromptBuilder(bundle).tokenizer, "tokenizer.json")


def test_transcribe_cli_refuses_a_broken_preprocessor_config(bundle: Path, tmp_path: Path) -> None:
    edit_json(bundle / "preprocessor_config.json", lambda d: d.update(sampling_rate=None))
    audio = tmp_path / "a.wav"
    sf.write(audio, np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32), 16000)
    line = cli_user_error("transcribe", "--bundle", str(bundle), str(audio))
    assert "preprocessor_config.json" in line and "sampling_rate" in line


# --- clips manifest ------------------------------------------------------------------------------------


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "a.wav", np.random.default_rng(1).uniform(-0.1, 0.1, 8000).astype(np.float32), 16000)
    return folder


def _manifest(**fields) -> str:
    return json.dumps({"sample_rate": 16000, "clips": [{"file": "a.wav", "transcript": "hi"}], **fields})


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("{not json", "is not valid JSON"),
        ('["a.wav"]', "JSON array, not an object"),
        (_manifest(clips={"file": "a.wav"}), '"clips" must be an array'),
        (_manifest(clips=[{"transcript": "hi"}]), 'clips[0] must be an object with a "file"'),
        (_manifest(clips=["a.wav"]), 'clips[0] must be an object with a "file"'),
        (_manifest(clips=[{"file": "/etc/passwd"}]), "must be a file name inside"),
        (_manifest(clips=[{"file": "../clips/a.wav"}]), "must be a file name inside"),
        (_manifest(clips=[{"file": "C:\\a.wav"}]), "must be a file name inside"),
        (_manifest(clips=[{"file": 3}]), "must be a file name inside"),
        (_manifest(clips=[{"file": "a.wav", "transcript": 3}]), "clips[0].transcript must be a string"),
        (_manifest(sample_rate="16k"), "sample_rate must be a positive number"),
        (_manifest(sample_rate=None), "sample_rate must be a positive number"),
        (_manifest(sample_rate=True), "sample_rate must be a positive number"),
        (_manifest(sample_rate=-16000), "sample_rate must be a positive number"),
        (_manifest(sample_rate=float("nan")), "sample_rate must be a positive number"),
    ],
)
def test_broken_manifest_is_one_line_naming_it(clips_dir: Path, text: str, phrase: str) -> None:
    (clips_dir / "manifest.json").write_text(text)
    message = raises_one_line(GraniteOnnxError, lambda: load_clips(clips_dir), "manifest.json", phrase)
    assert str(clips_dir / "manifest.json") in message


def test_valid_manifest_still_loads(clips_dir: Path) -> None:
    (clips_dir / "manifest.json").write_text(_manifest(sample_rate=16000.0))
    (clip,) = load_clips(clips_dir)
    assert clip.name == "a.wav" and clip.reference == "hi"


# --- partial checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def ckpt(tiny_ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))


def _shard(ckpt: Path) -> None:
    """Split the checkpoint's weights the way a sharded Hub checkpoint names them (one real shard)."""
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    names = json.loads(_header(ckpt / "model-00001-of-00002.safetensors")).keys() - {"__metadata__"}
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    weight_map["extra.weight"] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _header(path: Path) -> bytes:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return fh.read(length)


def test_index_naming_a_missing_shard(ckpt: Path) -> None:
    _shard(ckpt)
    raises_one_line(
        CheckpointError,
        lambda: validate_checkpoint(ckpt),
        str(ckpt / "model-00002-of-00002.safetensors"),
        "is missing",
        "interrupted",
    )


@pytest.mark.parametrize("index", ['{"weight_map": []}', "[]", "{", '{"weight_map": {"a": "../x"}}'])
def test_index_that_is_not_a_weight_map(ckpt: Path, index: str) -> None:
    (ckpt / "model.safetensors.index.json").write_text(index)
    raises_one_line(CheckpointError, lambda: validate_checkpoint(ckpt), "model.safetensors.index.json")


def test_truncated_safetensors(ckpt: Path) -> None:
    path = ckpt / "model.safetensors"
    size = path.stat().st_size
    os.truncate(path, size - 1000)
    raises_one_line(
        CheckpointError,
        lambda: validate_checkpoint(ckpt),
        f"{path} is truncated ({size - 1000} of {size} bytes)",
    )


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"\x01\x02", "is truncated (2 of 8 bytes)"),
        (struct.pack("<Q", 2**60) + b"{}", "not a valid safetensors file (its header claims"),
        (struct.pack("<Q", 4) + b"nope", "its header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "its header is not a JSON object"),
        (struct.pack("<Q", 30) + b'{"w": {"data_offsets": "0-4"}}', "has no valid data_offsets"),
        (struct.pack("<Q", 100) + b"{}", "is truncated (10 of 108 bytes)"),
    ],
)
def test_corrupt_safetensors_header(ckpt: Path, content: bytes, phrase: str) -> None:
    (ckpt / "model.safetensors").write_bytes(content)
    raises_one_line(CheckpointError, lambda: validate_checkpoint(ckpt), "model.safetensors", phrase)


def test_safetensors_longer_than_its_header_says(ckpt: Path) -> None:
    with (ckpt / "model.safetensors").open("ab") as fh:
        fh.write(b"\0" * 16)
    raises_one_line(CheckpointError, lambda: validate_checkpoint(ckpt), "model.safetensors", "is corrupt")


@pytest.mark.parametrize("text_config", [[1], "text", 5])
def test_checkpoint_text_config_that_is_not_an_object(ckpt: Path, text_config) -> None:
    edit_json(ckpt / "config.json", lambda d: d.update(text_config=text_config))
    raises_one_line(
        CheckpointError, lambda: validate_checkpoint(ckpt), str(ckpt / "config.json"), "text_config"
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(added_tokens=5),
        lambda d: d.update(model=5, added_tokens=[]),
        lambda d: d.update(model=[]),
    ],
)
def test_tokenizer_json_with_wrong_types(ckpt: Path, change) -> None:
    edit_json(ckpt / "tokenizer.json", change)
    try:
        validate_checkpoint(ckpt)
    except CheckpointError as exc:
        assert_one_line(exc, "tokenizer.json")


# --- metadata readers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [read_json, read_optional_json])
@pytest.mark.parametrize("text", ["[]", "3", "null", '"x"', "{"])
def test_metadata_reader_wants_a_json_object(tmp_path: Path, reader, text: str) -> None:
    path = tmp_path / "export_report.json"
    path.write_text(text)
    raises_one_line(BundleError, lambda: reader(path, "export again"), str(path), "export again")


def test_metadata_report_fields_of_the_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "export_report.json"
    raises_one_line(
        BundleError, lambda: describe_toolchain({"toolchain": [], "exporter": {}}, path), "toolchain"
    )
    raises_one_line(
        BundleError, lambda: describe_toolchain({"toolchain": {}, "exporter": 3}, path), "exporter"
    )
    raises_one_line(BundleError, lambda: describe_files(tmp_path, "config.json"), "copied_files")
    assert describe_files(tmp_path, ["../etc", "/abs"]) == {}
    path.touch()  # describe_source hashes the config it is given
    assert describe_source({"path": 3, "revision": ["x"]}, path)["commit"] is None
    assert token_ids({"text_config": "x", "audio_token_index": 5}, None) == {
        "audio": 5,
        "bos": None,
        "eos": None,
        "pad": None,
    }


# --- found by tests/test_fuzz.py ----------------------------------------------------------------------


def test_wav_header_declaring_an_absurd_sample_rate(tmp_path: Path) -> None:
    """A corrupt header at 2**31 - 1 Hz made resampling ask for a 320 GiB filter (MemoryError)."""
    fmt = struct.pack("<HHIIHH", 6, 1, 2**31 - 1, 0, 0, 0)
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF%\0\0\0WAVEfmt \x10\0\0\0" + fmt + b"data\x01\0\0\0\0")
    raises_one_line(AudioError, lambda: load_audio(path), str(path), "sample rate of 2147483647 Hz")


def test_audio_declaring_more_than_an_hour(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(path, np.full(4000, 0.1, np.float32), 1)  # 4000 s at 1 Hz: 64M samples once resampled
    raises_one_line(AudioError, lambda: load_audio(path), str(path), "split it into shorter pieces")


@pytest.mark.parametrize("where", ["audio", "bundle", "clips", "checkpoint"])
def test_names_too_long_for_the_os_are_missing_not_oserror(tmp_path: Path, where: str) -> None:
    """ENAMETOOLONG from Path.exists/is_dir/is_file was a traceback: such a name simply is not there."""
    long = tmp_path / ("x" * 300)
    call, error = {
        "audio": (lambda: load_audio(long), AudioError),
        "bundle": (lambda: Bundle.open(long), BundleError),
        "clips": (lambda: load_clips(long), GraniteOnnxError),
        "checkpoint": (lambda: validate_checkpoint(long), CheckpointError),
    }[where]
    raises_one_line(error, call, "does not exist")


def test_manifest_naming_a_file_too_long_for_the_os(clips_dir: Path) -> None:
    (clips_dir / "manifest.json").write_text(_manifest(clips=[{"file": "y" * 300}]))
    raises_one_line(GraniteOnnxError, lambda: load_clips(clips_dir), "manifest.json", "missing from")


def test_manifest_listing_no_clips(clips_dir: Path) -> None:
    (clips_dir / "manifest.json").write_text(_manifest(clips=[]))
    raises_one_line(GraniteOnnxError, lambda: load_clips(clips_dir), "manifest.json", "lists no clips")


def test_kv_agreement_of_unreadable_graphs_is_a_finding(tmp_path: Path) -> None:
    from granite_onnx.audit import check_kv_agreement

    for name in GRAPH_NAMES:
        (tmp_path / f"{name}.onnx").write_bytes(b"\x08\x07garbage")
    (problem,) = check_kv_agreement(tmp_path / "prompt_encode.onnx", tmp_path / "decode_step.onnx")
    assert "prompt_encode.onnx is not a readable ONNX file" in problem


@pytest.mark.parametrize(
    ("files", "phrase"),
    [
        ({}, "parity_report.json is missing"),
        ({"parity_report.json": "{}"}, "export_report.json is missing"),
        ({"parity_report.json": "null", "export_report.json": "{}"}, "JSON null, not an object"),
        ({"parity_report.json": "{}", "export_report.json": "[]"}, "JSON array, not an object"),
        ({"parity_report.json": "{}", "export_report.json": '{"toolchain": 1}'}, "has no toolchain object"),
        (
            {"parity_report.json": '{"gates": 1}', "export_report.json": '{"toolchain": {}}'},
            "not a parity report",
        ),
    ],
)
def test_expectation_snapshot_of_a_broken_bundle(tmp_path: Path, files: dict, phrase: str) -> None:
    from granite_onnx.publish.expectation import snapshot

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    raises_one_line(BundleError, lambda: snapshot(tmp_path), str(tmp_path), phrase)
    raises_one_line(BundleError, lambda: snapshot(tmp_path / "file.txt"), "is not a folder")


def test_expect_cli_on_a_file_instead_of_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    line = cli_user_error(
        "expect", "--bundle", str(tmp_path / "file.txt"), "--expected", str(tmp_path / "e.json")
    )
    assert "file.txt" in line


def test_checksums_manifest_that_is_not_text_or_escapes(tmp_path: Path) -> None:
    from granite_onnx.publish.checksums import MANIFEST, verify_manifest

    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe")
    assert "cannot be read as UTF-8" in verify_manifest(tmp_path)[0]
    (tmp_path / MANIFEST).write_text(f"{'0' * 64}  ../../etc/passwd\n")
    assert "not a file inside the bundle" in verify_manifest(tmp_path)[0]


@pytest.mark.parametrize(
    ("text", "phrase"), [("[]", "JSON array"), ('{"parity": 3}', "does not follow its schema")]
)
def test_assemble_refuses_corrupt_metadata(tmp_path: Path, text: str, phrase: str) -> None:
    from granite_onnx.metadata.schema import METADATA_FILE
    from granite_onnx.publish.assemble import assemble

    (tmp_path / METADATA_FILE).write_text(text)
    raises_one_line(BundleError, lambda: assemble(tmp_path, tmp_path / "dest"), METADATA_FILE, phrase)
    assert not (tmp_path / "dest").exists()
