"""Hugging Face audio datasets as parity clip sources (parity/datasets.py, ``parity --dataset``), on local
datasets the tests build from the shipped clips: a save_to_disk folder and an audiofolder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CLIPS, user_error

datasets = pytest.importorskip("datasets", reason="SKIPPED LOUDLY: the datasets package is not installed")

from granite_onnx.errors import GraniteOnnxError  # noqa: E402
from granite_onnx.parity.datasets import DatasetSpec, dataset_facts, write_clips  # noqa: E402


def _manifest() -> list[dict]:
    return json.loads((CLIPS / "manifest.json").read_text())["clips"][:3]


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    """A DatasetDict saved with save_to_disk: a test split of three real clips and one undecodable row."""
    rows = _manifest()
    audio = [{"bytes": (CLIPS / r["file"]).read_bytes(), "path": r["file"]} for r in rows]
    audio.append({"bytes": b"not audio at all", "path": "broken.flac"})
    texts = [r["transcript"] for r in rows] + ["never decoded"]
    # Built as a plain struct, then cast: encoding through Audio would want torchcodec, which is not needed.
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"audio": struct, "text": datasets.Value("string")})
    split = datasets.Dataset.from_dict({"audio": audio, "text": texts}, features=features)
    split = split.cast_column("audio", datasets.Audio(decode=False))
    out = tmp_path_factory.mktemp("saved") / "speech"
    datasets.DatasetDict({"test": split, "train": split.select([0])}).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory) -> Path:
    """An audiofolder: the files and a metadata.csv of file names and transcriptions."""
    folder = tmp_path_factory.mktemp("audiofolder") / "clips-folder"
    folder.mkdir()
    lines = ["file_name,transcription"]
    for row in _manifest():
        shutil.copy(CLIPS / row["file"], folder / row["file"])
        lines.append(f'{row["file"]},"{row["transcript"]}"')
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_a_saved_dataset_becomes_a_clip_folder_and_a_broken_row_is_counted(saved_dataset, tmp_path):
    written = write_clips(DatasetSpec(str(saved_dataset)), tmp_path / "speech-test")
    assert (written.split, written.written) == ("test", 3)
    assert [f["row"] for f in written.failed] == [3] and written.failed[0]["name"].endswith("broken.flac")
    manifest = json.loads((tmp_path / "speech-test" / "manifest.json").read_text())
    rows = _manifest()
    assert [c["transcript"] for c in manifest["clips"]] == [r["transcript"] for r in rows]
    for clip, row in zip(manifest["clips"], rows, strict=True):  # the bytes the dataset held, unchanged
        assert (tmp_path / "speech-test" / clip["file"]).read_bytes() == (CLIPS / row["file"]).read_bytes()
    facts = dataset_facts(tmp_path / "speech-test")
    assert facts["clips"] == 3 and len(facts["failed"]) == 1 and facts["source"] == str(saved_dataset)


def test_split_limit_and_an_audiofolder(saved_dataset, audio_folder, tmp_path):
    one = write_clips(DatasetSpec(str(saved_dataset), split="train"), tmp_path / "a")
    assert (one.split, one.written, one.failed) == ("train", 1, [])
    two = write_clips(DatasetSpec(str(saved_dataset), limit=2), tmp_path / "b")
    assert (two.written, two.failed) == (2, [])
    folder = write_clips(DatasetSpec(str(audio_folder), text_column="transcription"), tmp_path / "c")
    assert folder.written == 3 and folder.failed == []
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert sorted(c["transcript"] for c in manifest["clips"]) == sorted(r["transcript"] for r in _manifest())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(split="dev"), "has no split 'dev'; it has test, train"),
        (dict(text_column="words"), "has no text column 'words'"),
        (dict(audio_column="wave"), "has no audio column 'wave'"),
    ],
)
def test_bad_dataset_options_are_one_line_errors(saved_dataset, tmp_path, spec, message):
    with pytest.raises(GraniteOnnxError, match=message) as err:
        write_clips(DatasetSpec(str(saved_dataset), **spec), tmp_path / "x")
    assert "\n" not in str(err.value)


def test_a_missing_local_dataset_is_one_line(tmp_path):
    with pytest.raises(GraniteOnnxError, match="cannot read dataset") as err:
        write_clips(DatasetSpec(str(tmp_path / "nowhere" / "ds")), tmp_path / "x")
    assert "\n" not in str(err.value)


def test_parity_on_a_dataset_names_the_set_and_the_row_that_failed(measured_bundle, saved_dataset, tmp_path):
    """`granite-onnx parity --dataset` on the tiny bundle: the dataset is a clip set of the report, its
    transcripts are the references, and the broken row is named there; FP32 stays byte-exact."""
    from click.testing import CliRunner

    from granite_onnx.cli import cli

    bundle = tmp_path / "tiny"
    shutil.copytree(measured_bundle, bundle)
    args = ["parity", "--bundle", str(bundle), "--model", "tiny", "--dataset", str(saved_dataset)]
    result = CliRunner().invoke(cli, [*args, "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "1 row(s) failed to decode" in result.output
    report = json.loads((bundle / "parity_report.json").read_text())
    (name, facts) = next(iter(report["sets"].items()))
    assert name == "speech" and facts["clips"] == 3
    assert facts["dataset"]["failed"][0]["row"] == 3 and facts["pytorch_wer_vs_reference"] is not None
    assert all(g["passed"] for g in report["gates"])
    from granite_onnx.metadata.stage import write_metadata

    write_metadata(bundle)
    assert "speech (3 clips; 1 dataset rows failed to decode)" in (bundle / "README.md").read_text()


def test_parity_needs_clips_or_a_dataset(measured_bundle):
    message = user_error(["parity", "--bundle", str(measured_bundle), "--model", "tiny"])
    assert "give --clips FOLDER, --dataset NAME_OR_PATH, or both" in message
    message = user_error(
        [
            "parity",
            "--bundle",
            str(measured_bundle),
            "--model",
            "tiny",
            "--clips",
            str(CLIPS),
            "--split",
            "test",
        ]
    )
    assert "go with --dataset" in message
