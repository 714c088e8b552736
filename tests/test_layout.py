"""The shared layout (``export --layout shared``) and the runtime that holds its weights once.

prompt_encode and decode_step carry the same LLM weights; in the shared layout they point them into one
``llm.shared.onnx_data``. These tests check that the files are valid ONNX external data that onnxruntime
loads graph by graph, that nothing changes numerically, that the later stages (quantise, metadata) read
the layout, and that the runtime hands both sessions the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import CLIPS
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from granite_onnx.audit import audit_file
from granite_onnx.cli import cli
from granite_onnx.layout import share_llm_weights
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import log_mel
from granite_onnx.runtime.pipeline import SpeechPipeline
from granite_onnx.runtime.sessions import session_options
from granite_onnx.sidecar import external_files
from granite_onnx.verify import verify_bundle

SHARED = "llm.shared.onnx_data"


@pytest.fixture(scope="module")
def shared_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny FP32 bundle rewritten in the shared layout."""
    bundle = tmp_path_factory.mktemp("shared") / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    share_llm_weights(bundle)
    return bundle


def external_locations(path: Path) -> dict[str, str]:
    """Initializer name -> the file its bytes live in."""
    model = onnx.load(str(path), load_external_data=False)
    return {t.name: ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}


def weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.onnx*"))


def test_the_llm_weights_are_stored_once(tiny_bundle, shared_bundle):
    prompt = external_locations(shared_bundle / "prompt_encode.onnx")
    decode = external_locations(shared_bundle / "decode_step.onnx")
    assert set(prompt.values()) <= {SHARED, "prompt_encode.onnx_data"}
    assert list(prompt.values()).count(SHARED) > 0 and list(decode.values()).count(SHARED) > 0
    llm_bytes = (tiny_bundle / "decode_step.onnx_data").stat().st_size
    shared_bytes = (shared_bundle / SHARED).stat().st_size
    assert shared_bytes <= llm_bytes  # one copy, not two
    assert folder_bytes(shared_bundle) <= folder_bytes(tiny_bundle) - llm_bytes + 4096 * 4
    assert external_files(shared_bundle / "decode_step.onnx") == [
        shared_bundle / "decode_step.onnx_data",
        shared_bundle / SHARED,
    ]


def test_every_weight_keeps_its_value(tiny_bundle, shared_bundle):
    for graph in ("prompt_encode.onnx", "decode_step.onnx"):
        before, after = weights(tiny_bundle / graph), weights(shared_bundle / graph)
        assert before.keys() == after.keys()
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_the_shared_layout_passes_the_contract_and_verify(shared_bundle):
    for graph in ("encoder.onnx", "prompt_encode.onnx", "decode_step.onnx"):
        assert audit_file(shared_bundle / graph).ok, audit_file(shared_bundle / graph).problems
    failed = [c for c in verify_bundle(shared_bundle) if not c.ok and not c.skipped]
    assert failed == []


def test_a_missing_shared_file_or_a_foreign_location_is_a_contract_problem(shared_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(shared_bundle, bundle)
    (bundle / SHARED).unlink()
    assert any(SHARED in p and "missing" in p for p in audit_file(bundle / "decode_step.onnx").problems)
    model = onnx.load(str(shared_bundle / "decode_step.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == SHARED:
                entry.value = "elsewhere.onnx_data"
    onnx.save(model, str(bundle / "decode_step.onnx"))
    assert any("expected one sidecar" in p for p in audit_file(bundle / "decode_step.onnx").problems)


def test_both_layouts_transcribe_identically_and_the_runtime_holds_the_weights_once(
    tiny_bundle, shared_bundle
):
    audio = load_audio(CLIPS / "jfk.flac", 16000)[: 16000 * 4]
    # Sessions on shared weights run without pre-packing (no per-session packed copy): against the per-graph
    # layout without pre-packing the results are bit-identical, against pre-packed kernels float-close.
    per_graph = SpeechPipeline(tiny_bundle, threads=1, prepack=False)
    packed = SpeechPipeline(tiny_bundle, threads=1)
    shared = SpeechPipeline(shared_bundle, threads=1)
    features = log_mel(audio, per_graph.bundle.features)[None]
    embeds = per_graph.audio_embeds(features)
    ids = per_graph.prompt_ids(embeds.shape[1])
    want_logits, want_kv = per_graph.prompt(ids, embeds)
    got_logits, got_kv = shared.prompt(ids, embeds)
    np.testing.assert_array_equal(got_logits, want_logits)
    np.testing.assert_allclose(got_logits, packed.prompt(ids, embeds)[0], rtol=1e-5, atol=1e-4)
    token = np.array([[int(want_logits[0].argmax())]], np.int64)
    np.testing.assert_array_equal(shared.step(token, got_kv)[0], per_graph.step(token, want_kv)[0])
    # One OrtValue per shared weight, handed to both LLM sessions: the same objects, not copies.
    prompt_values = dict(shared.shared.initializers(shared_bundle / "prompt_encode.onnx"))
    decode_values = dict(shared.shared.initializers(shared_bundle / "decode_step.onnx"))
    assert prompt_values and all(
        prompt_values[n] is decode_values[n] for n in prompt_values.keys() & decode_values.keys()
    )
    assert len(shared.shared._maps) == 1  # one memory map of llm.shared.onnx_data
    assert shared.transcribe_array(audio).token_ids == packed.transcribe_array(audio).token_ids


def test_quantising_the_shared_layout_writes_the_same_tier(tiny_bundle, shared_bundle, tmp_path):
    """A tier reads its FP32 weights through whichever file holds them: same bytes from both layouts."""
    from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle

    digests = []
    for source in (tiny_bundle, shared_bundle):
        bundle = tmp_path / source.parent.name
        shutil.copytree(source, bundle)
        report = quantise_bundle(bundle, "int8w", QuantiseOptions(clips=CLIPS))
        assert not report.skipped
        digests.append(
            [(bundle / f).read_bytes() for f in ("decode_step_int8w.onnx", "decode_step_int8w.onnx_data")]
        )
    assert digests[0] == digests[1]


def test_export_writes_the_shared_layout_and_metadata_records_it(tiny_ckpt, tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli, ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(out), "--layout", "shared"]
    )
    assert result.exit_code == 0, result.output
    assert f"{SHARED}:" in result.output and (out / SHARED).is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["shared_layout"]["shared_file"] == SHARED and report["shared_layout"]["tensors"] > 0
    assert SHARED in report["exporter"]["external_data"]
    result = CliRunner().invoke(cli, ["metadata", "--bundle", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "granite_export_metadata.json").read_text())
    assert meta["graphs"]["decode_step"]["shared_sidecar"]["file"] == SHARED
    assert meta["graphs"]["encoder"]["shared_sidecar"] is None
    assert f"`{SHARED}` (shared by" in (out / "README.md").read_text()


def test_an_unknown_layout_is_a_usage_error(tiny_ckpt, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(tmp_path / "b"), "--layout", "one-file"],
    )
    assert result.exit_code == 2 and "one-file" in result.output
    assert not (tmp_path / "b").exists()


def test_a_tier_in_the_shared_layout_stores_its_llm_once_and_transcribes_the_same(tiny_bundle, tmp_path):
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    args = [
        "quantise",
        "--bundle",
        str(bundle),
        "--tier",
        "int8w",
        "--layout",
        "shared",
        "--clips",
        str(CLIPS),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    shared = bundle / "llm_int8w.shared.onnx_data"
    assert shared.is_file()
    assert set(external_locations(bundle / "decode_step_int8w.onnx").values()) <= {
        shared.name,
        "decode_step_int8w.onnx_data",
    }
    assert audit_file(bundle / "prompt_encode_int8w.onnx").ok
    per_graph = tmp_path / "per-graph"
    shutil.copytree(tiny_bundle, per_graph)
    result = CliRunner().invoke(
        cli, ["quantise", "--bundle", str(per_graph), "--tier", "int8w", "--clips", str(CLIPS)]
    )
    assert result.exit_code == 0, result.output
    assert folder_bytes(bundle) < folder_bytes(per_graph)
    audio = load_audio(CLIPS / "jfk.flac", 16000)[: 16000 * 4]
    # Shared weights run without pre-packing (see SharedWeights), and for int8w that is another kernel path
    # than the pre-packed one: the same path on the per-graph files gives the same tokens.
    want = SpeechPipeline(per_graph, "int8w", threads=1, prepack=False).transcribe_array(audio).token_ids
    assert SpeechPipeline(bundle, "int8w", threads=1).transcribe_array(audio).token_ids == want


def test_unpacked_sessions_keep_the_residual_scale_out_of_the_matmul(tiny_bundle, tmp_path):
    """Sessions that read shared weights run without pre-packing; there a MatMul with a fused scale
    (FusedMatMul alpha, from Granite's residual_multiplier) packs its weight on every decode step.
    The optimised graph of such a session must keep plain MatMuls; the pre-packed default may fuse."""

    def fused_scales(prepack: bool) -> int:
        options = session_options(prepack=prepack)
        options.optimized_model_filepath = str(tmp_path / f"optimised_{prepack}.onnx")
        path = str(tiny_bundle / "decode_step.onnx")
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return sum(
            1
            for node in graph.node
            if node.op_type == "FusedMatMul"
            and any(a.name == "alpha" and abs(a.f - 1.0) > 1e-6 for a in node.attribute)
        )

    assert fused_scales(prepack=True) > 0, "the tiny model has no scaled MatMul left to test this on"
    assert fused_scales(prepack=False) == 0
