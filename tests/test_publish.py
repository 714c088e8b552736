"""Assembling, checksumming, verifying and publishing a bundle (no network: the Hub client is faked)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from granite_onnx.checkpoint import CheckpointSource
from granite_onnx.cli import cli
from granite_onnx.errors import BundleError
from granite_onnx.metadata.stage import write_metadata
from granite_onnx.publish.assemble import GateRefusal, assemble
from granite_onnx.publish.checksums import verify_manifest
from granite_onnx.publish.hub import publish


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def measured(measured_bundle):
    return measured_bundle


@pytest.fixture(scope="module")
def assembled(measured, tmp_path_factory):
    dest = tmp_path_factory.mktemp("publish") / "granite-speech-tiny-onnx"
    assemble(measured, dest)
    return dest


def test_assembled_file_list_follows_the_contract(assembled):
    files = sorted(p.relative_to(assembled).as_posix() for p in assembled.rglob("*") if p.is_file())
    names = ("decode_step", "encoder", "frontend", "prompt_encode")
    graphs = [f"{g}{s}" for g in names for s in (".onnx", ".onnx_data")]
    expected = {
        *graphs,
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "config.json",
        "generation_config.json",
        "granite_prompts.json",
        "granite_export_metadata.json",
        "README.md",
        "LICENSE",
        "SHA256SUMS",
        "export_report.json",
        "parity_report.json",
        "reproduce/regenerate.sh",
    }
    assert set(files) == expected
    assert "Apache License" in (assembled / "LICENSE").read_text()
    script = (assembled / "reproduce" / "regenerate.sh").read_text()
    assert "granite-onnx export --model-dir" in script and "torch==2.13.0" in script
    assert verify_manifest(assembled) == []


def test_a_flipped_byte_in_a_sidecar_fails_the_checksums(assembled, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(assembled, copy)
    data = copy / "decode_step.onnx_data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    assert verify_manifest(copy) == ["decode_step.onnx_data does not match its sha256 in SHA256SUMS"]
    result = run("verify", "--bundle", str(copy))
    assert result.exit_code == 1
    assert "FAIL  SHA256SUMS" in result.output


def test_verify_passes_on_the_assembled_bundle(assembled):
    result = run("verify", "--bundle", str(assembled))
    assert result.exit_code == 0, result.output
    assert "PASS  SHA256SUMS" in result.output
    assert result.output.count("onnxruntime load") == 4  # frontend, encoder, prompt_encode, decode_step


def test_verify_flags_a_foreign_domain_node_and_a_second_sidecar(measured, tmp_path):
    import onnx
    from onnx import helper

    bundle = tmp_path / "bundle"
    shutil.copytree(measured, bundle)
    path = bundle / "encoder.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.node.append(helper.make_node("FusedGemm", ["input_features"], ["x"], domain="com.microsoft"))
    first = next(i for i in model.graph.initializer if i.external_data)
    for entry in first.external_data:
        if entry.key == "location":
            entry.value = "other.onnx_data"
    shutil.copyfile(bundle / "encoder.onnx_data", bundle / "other.onnx_data")
    path.unlink()
    onnx.save_model(model, str(path))
    result = run("verify", "--bundle", str(bundle))
    assert result.exit_code == 1
    line = next(ln for ln in result.output.splitlines() if "encoder.onnx" in ln and "contract" in ln)
    assert "com.microsoft" in line and "other.onnx_data" in line


def test_assembly_refuses_a_failed_gate_unless_forced(measured, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(measured, bundle)
    report = json.loads((bundle / "parity_report.json").read_text())
    report["gates"][0]["passed"] = False
    (bundle / "parity_report.json").write_text(json.dumps(report))
    write_metadata(bundle)
    with pytest.raises(GateRefusal, match="fp32_byte_exact"):
        assemble(bundle, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    result = run("bundle", "--bundle", str(bundle), "--dest", str(tmp_path / "dest"))
    assert result.exit_code == 2 and "--force" in result.stderr
    forced = assemble(bundle, tmp_path / "dest", force=True)
    assert forced.forced and forced.failed_gates == ("fp32_byte_exact",)
    card = (tmp_path / "dest" / "README.md").read_text()
    assert "fp32_byte_exact" in card and "forced" in card.lower()


def test_assembly_refuses_a_bundle_never_measured(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    write_metadata(bundle)
    with pytest.raises(GateRefusal, match="parity_measured"):
        assemble(bundle, tmp_path / "dest")


def test_publish_dry_run_prints_every_operation_without_network(assembled, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("publish", "--bundle", str(assembled), "--repo-id", "someone/granite-tiny-onnx", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    files = sorted(p.relative_to(assembled).as_posix() for p in assembled.rglob("*") if p.is_file())
    total = sum((assembled / f).stat().st_size for f in files)
    assert (
        lines[0]
        == f"would upload to someone/granite-tiny-onnx in one commit: {len(files)} files, {total:,} bytes"
    )
    for f in files:
        assert f"  add {f}  {(assembled / f).stat().st_size:,} bytes" in lines


class FakeApi:
    """Records the calls huggingface_hub's HfApi would receive."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, list(operations), kwargs))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/0123abcd"

        return Info()


def test_publish_uploads_everything_in_one_commit(assembled):
    api = FakeApi()
    result = publish(assembled, "someone/granite-tiny-onnx", revision="v1", private=True, api=api)
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    _, _, operations, kwargs = api.calls[2]
    assert kwargs["revision"] == "v1"
    uploaded = sorted(op.path_in_repo for op in operations)
    assert uploaded == sorted(
        p.relative_to(assembled).as_posix() for p in assembled.rglob("*") if p.is_file()
    )
    for op in operations:
        assert op.path_or_fileobj == str(assembled / op.path_in_repo)
    assert result.commit_url == "https://huggingface.co/someone/granite-tiny-onnx/commit/0123abcd"


def test_publish_refuses_a_folder_that_was_not_assembled(measured):
    with pytest.raises(BundleError, match="granite-onnx bundle"):
        publish(measured, "someone/x", dry_run=True)


def test_export_twice_gives_byte_identical_graphs(tiny_ckpt, tiny_bundle, tmp_path):
    from granite_onnx.export.stage import export_bundle

    again = tmp_path / "again"
    export_bundle(CheckpointSource(tiny_ckpt), again)
    for name in ("encoder", "prompt_encode", "decode_step"):
        for suffix in (".onnx", ".onnx_data"):
            assert (again / f"{name}{suffix}").read_bytes() == (
                tiny_bundle / f"{name}{suffix}"
            ).read_bytes(), name


def test_expectation_flags_a_changed_artefact_and_a_changed_transcript(measured, tmp_path):
    from granite_onnx.publish.expectation import differences, snapshot, toolchain_changes

    expected = snapshot(measured)
    assert differences(snapshot(measured), expected) == []
    bundle = tmp_path / "bundle"
    shutil.copytree(measured, bundle)
    data = bundle / "encoder.onnx_data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    report = json.loads((bundle / "parity_report.json").read_text())
    report["multi_clip_parity"][0]["tiers"][0]["text"] += " extra"
    (bundle / "parity_report.json").write_text(json.dumps(report))
    actual = snapshot(bundle)
    actual["toolchain"]["torch"] = "9.9.9"
    diff = differences(actual, expected)
    assert len(diff) == 2
    assert diff[0].startswith("encoder.onnx_data: sha256 expected")
    assert diff[1].startswith(f"parity clips {report['multi_clip_parity'][0]['clip']}")
    assert toolchain_changes(actual, expected) == [
        f"toolchain torch: expected {expected['toolchain']['torch']}, got 9.9.9"
    ]
    expected_file = tmp_path / "expected.json"
    expected_file.write_text(json.dumps(expected))
    result = run("expect", "--bundle", str(bundle), "--expected", str(expected_file))
    assert result.exit_code == 1 and "differs from" in result.stderr


def test_expectation_holds_a_near_tie_divergence_loosely_and_a_confident_one_exactly():
    """A quantised transcript that leaves PyTorch's at a near-tie is what CPU rounding can change (AVX2
    against AVX-512): byte-exact and near-tie outcomes are interchangeable; a confident divergence, or any
    change in FP32, is still a difference."""
    from granite_onnx.publish.expectation import NEAR_TIE, _parity_results, differences

    def report(int8_margin, int8_exact, fp32_text="a b c"):
        int8 = {
            "tier": "int8",
            "text": "x" if not int8_exact else "a b c",
            "byte_exact": int8_exact,
            "margin_at_divergence": None if int8_exact else int8_margin,
        }
        fp32 = {
            "tier": "fp32",
            "text": fp32_text,
            "byte_exact": fp32_text == "a b c",
            "margin_at_divergence": None,
        }
        clip = {
            "clip": "c.flac",
            "pytorch_text": "a b c",
            "tiers": [fp32, int8],
            "pytorch_margins": [0.01, *([5.0] * 20)],
        }
        return {"gates": [], "multi_clip_parity": [clip]}

    def snap(parity):
        return {"sha256": {}, "parity": _parity_results(parity)}

    near, exact, confident = report(0.001, False), report(None, True), report(5.0, False)
    assert snap(near)["parity"]["clips"]["c.flac"]["int8"] == NEAR_TIE
    assert differences(snap(near), snap(exact)) == [] and differences(snap(exact), snap(near)) == []
    assert differences(snap(confident), snap(exact)) and differences(snap(confident), snap(near))
    assert differences(snap(report(0.001, False, fp32_text="a b d")), snap(near))


def test_expectation_does_not_hold_an_ungated_tiers_text():
    """A tier parity reported without a gate (tiny-plus's INT8) is not held: its text after a confident
    divergence depends on the CPU. Gates and the gated tiers still are."""
    from granite_onnx.publish.expectation import UNGATED, _parity_results, differences

    def report(int8_text: str, fp32_text: str = "a b c") -> dict:
        tiers = [
            {
                "tier": "fp32",
                "text": fp32_text,
                "byte_exact": fp32_text == "a b c",
                "margin_at_divergence": None,
            },
            {"tier": "int8", "text": int8_text, "byte_exact": False, "margin_at_divergence": 5.0},
        ]
        clip = {"clip": "c.flac", "pytorch_text": "a b c", "tiers": tiers, "pytorch_margins": [5.0] * 20}
        return {"gates": [], "multi_clip_parity": [clip], "ungated": ["int8"]}

    def snap(parity):
        return {"sha256": {}, "parity": _parity_results(parity)}

    assert snap(report("x"))["parity"]["clips"]["c.flac"]["int8"] == UNGATED
    assert differences(snap(report("x")), snap(report("y"))) == []
    assert differences(snap(report("x", fp32_text="a b d")), snap(report("x")))
