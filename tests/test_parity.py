"""The parity harness measures what it claims and its gates fail on broken graphs."""

from __future__ import annotations

import json
import shutil

import jiwer
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import CLIPS
from onnx import helper, numpy_helper

from granite_onnx.checkpoint import CheckpointSource
from granite_onnx.cli import cli
from granite_onnx.export.writer import save_with_sidecar
from granite_onnx.parity.harness import ParityOptions, run_parity
from granite_onnx.parity.metrics import char_distance, first_divergence, normalise, wer

MAX_NEW = 16


@pytest.fixture(scope="module")
def report(tiny_bundle, tiny_ckpt):
    return run_parity(tiny_bundle, CheckpointSource(tiny_ckpt), CLIPS, ParityOptions(max_new_tokens=MAX_NEW))


def test_fp32_passes_with_a_clean_numeric_block(report, clip_manifest):
    assert report.passed, report.failed_gates()
    (block,) = report.single_clip
    assert block.tier == "fp32" and block.clip == clip_manifest[0]["file"]
    assert (
        block.encoder.max_abs < 1e-4
        and block.encoder.mean_abs <= block.encoder.p99_abs <= block.encoder.max_abs
    )
    assert block.prompt_logits_max_abs < 1e-3 and block.prompt_argmax_agrees
    assert block.kv_max_abs < 1e-4
    assert block.decode.steps == MAX_NEW and block.decode.mismatches == 0
    assert block.transcript_match


def test_every_clip_is_reported_with_its_human_reference(report, clip_manifest):
    assert [c.clip for c in report.multi_clip_parity] == [e["file"] for e in clip_manifest]
    for clip, entry in zip(report.multi_clip_parity, clip_manifest, strict=True):
        assert clip.reference_text == entry["transcript"]
        assert clip.duration_s == pytest.approx(entry["seconds"], abs=0.05)
        (fp32,) = clip.tiers
        assert fp32.byte_exact and fp32.text == clip.pytorch_text and fp32.first_divergent_step is None
        assert fp32.wer_vs_pytorch == 0.0 and fp32.levenshtein_vs_fp32 == 0
        assert fp32.wer_vs_reference == pytest.approx(wer(entry["transcript"], fp32.text))


def test_metrics_use_the_stated_normalisation():
    assert normalise("And so, my fellow Americans: ask NOT!") == "and so my fellow americans ask not"
    assert wer("ask not what", "Ask not, what?") == 0.0
    assert wer("a b c d", "a x c d") == pytest.approx(0.25)
    assert wer("", "") == 0.0 and wer("", "words") == 1.0
    assert char_distance("kitten", "sitting") == 3
    assert first_divergence((1, 2, 3), (1, 2, 3)) is None
    assert first_divergence((1, 2, 3), (1, 5, 3)) == 1
    assert first_divergence((1, 2), (1, 2, 3)) == 2


def _perturb_decode_logits(bundle, scale: float = 3.0) -> None:
    """Add a fixed random vector to decode_step's logits: a plausible-looking but wrong graph."""
    path = bundle / "decode_step.onnx"
    model = onnx.load(str(path))
    vocab = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    bias = np.random.default_rng(0).standard_normal(vocab).astype(np.float32) * scale
    model.graph.initializer.append(numpy_helper.from_array(bias, "logits_bias"))
    model.graph.node.append(helper.make_node("Add", ["logits_raw", "logits_bias"], ["logits"]))
    save_with_sidecar(model, path)


def _run_parity_cli(bundle, checkpoint):
    """`granite-onnx parity` on a (broken) bundle copy: the CLI result and the report it wrote."""
    args = ["parity", "--bundle", str(bundle), "--model-dir", str(checkpoint), "--clips", str(CLIPS)]
    result = CliRunner().invoke(cli, [*args, "--max-new-tokens", str(MAX_NEW)])
    return result, json.loads((bundle / "parity_report.json").read_text())


def test_gate_fails_when_decode_step_logits_are_perturbed(tiny_bundle, tiny_ckpt, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    _perturb_decode_logits(bundle)
    result, written = _run_parity_cli(bundle, tiny_ckpt)
    assert result.exit_code == 1, result.output
    assert "parity gate failed: fp32_byte_exact" in result.stderr
    assert written["passed"] is False
    block = written["single_clip"][0]
    assert block["decode"]["mismatches"] > 0
    assert len(block["decode"]["mismatch_margins"]) == block["decode"]["mismatches"]
    assert block["prompt_argmax_agrees"] is True  # prompt_encode is untouched: the block localises the fault


def test_gate_fails_for_an_encoder_exported_without_the_length_fix(tiny_ckpt, tiny_bundle, tmp_path):
    """Traced at 430 frames without the patches, the encoder is wrong (or fails) at the clips' lengths."""
    from granite_onnx.export.stage import ExportOptions, export_bundle
    from granite_onnx.identity import copy_export_id

    broken = tmp_path / "broken"
    export_bundle(
        CheckpointSource(tiny_ckpt),
        broken,
        ExportOptions(graphs=("encoder",), check=False, length_patches=False),
    )
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    for suffix in (".onnx", ".onnx_data"):
        shutil.copyfile(broken / f"encoder{suffix}", bundle / f"encoder{suffix}")
    # Give it the bundle's export id: the identity check would refuse it before parity could run.
    copy_export_id(bundle / "prompt_encode.onnx", bundle / "encoder.onnx")
    result, written = _run_parity_cli(bundle, tiny_ckpt)
    assert result.exit_code == 1, result.output
    assert "fp32_byte_exact" in result.stderr
    assert written["passed"] is False


def test_parity_runs_clips_in_parallel_processes_with_the_same_result(report, tiny_bundle, tiny_ckpt):
    parallel = run_parity(
        tiny_bundle, CheckpointSource(tiny_ckpt), CLIPS, ParityOptions(max_new_tokens=MAX_NEW, jobs=2)
    )
    assert parallel.multi_clip_parity == report.multi_clip_parity


def test_parity_refuses_a_checkpoint_the_bundle_was_not_exported_from(tiny_bundle, tmp_path):
    from granite_onnx.fixtures import TinySpec, write_tiny_checkpoint

    other = write_tiny_checkpoint(tmp_path / "other", TinySpec(seed=1, text_num_layers=3))
    result = CliRunner().invoke(
        cli, ["parity", "--bundle", str(tiny_bundle), "--model-dir", str(other), "--clips", str(CLIPS)]
    )
    assert result.exit_code == 2
    assert "exported from another checkpoint" in result.stderr


def test_each_clips_folder_is_summarised_as_its_own_set(tiny_bundle, tiny_ckpt, tmp_path, clip_manifest):
    """Two --clips folders: one report, clips tagged with their folder, measures pooled per folder."""
    folders = []
    for name, entries in (("first", clip_manifest[:2]), ("second", clip_manifest[2:3])):
        folder = tmp_path / name
        folder.mkdir()
        for entry in entries:
            shutil.copyfile(CLIPS / entry["file"], folder / entry["file"])
        (folder / "manifest.json").write_text(json.dumps({"clips": entries}))
        folders.append(folder)
    got = run_parity(tiny_bundle, CheckpointSource(tiny_ckpt), folders, ParityOptions(max_new_tokens=4))
    assert [c.clip_set for c in got.multi_clip_parity] == ["first", "first", "second"]
    assert list(got.sets) == ["first", "second"]
    assert got.sets["first"]["clips"] == 2 and got.sets["second"]["clips"] == 1
    fp32 = got.sets["first"]["tiers"]["fp32"]
    assert fp32["wer_vs_pytorch"] == 0.0 and fp32["divergent_clips"] == 0  # FP32 is byte-exact
    refs = [(c.reference_text, c.pytorch_text) for c in got.multi_clip_parity[:2]]
    want = jiwer.wer([normalise(r) for r, _ in refs], [normalise(h) for _, h in refs])
    assert got.sets["first"]["pytorch_wer_vs_reference"] == pytest.approx(want, abs=1e-6)


def test_the_same_clip_name_in_two_folders_is_a_user_error(tmp_path):
    from granite_onnx.errors import GraniteOnnxError
    from granite_onnx.parity.clips import load_clip_sets

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copyfile(CLIPS / "jfk.flac", tmp_path / name / "jfk.flac")
    with pytest.raises(GraniteOnnxError, match="jfk.flac is in both"):
        load_clip_sets([tmp_path / "a", tmp_path / "b"])
