"""The quantise stage: four tiers on the tiny bundle, each audited, recorded and runnable."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import CLIPS
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from granite_onnx.audit import audit_file
from granite_onnx.cli import cli
from granite_onnx.errors import BundleError, GraniteOnnxError
from granite_onnx.quantise.calibration import collect
from granite_onnx.quantise.stage import QuantiseError, QuantiseOptions, quantise_bundle
from granite_onnx.quantise.tiers import DEFAULT_TIERS, TIERS
from granite_onnx.quantise.weight_only import SUFFIX
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.bundle import Bundle, available_tiers
from granite_onnx.runtime.features import FeatureConfig, log_mel
from granite_onnx.runtime.sessions import open_session
from granite_onnx.specs import GRAPH_NAMES
from granite_onnx.verify import verify_bundle

LM_HEAD = "/lm_head/MatMul"
# Op types that prove each tier's form (and, for the integer tiers, that nothing fell back to FP32).
TIER_OPS = {
    "int8": {"MatMulInteger", "DynamicQuantizeLinear"},
    "int8w": {"DequantizeLinear"},
    "int8s": {"QuantizeLinear", "DequantizeLinear"},
    "fp16": {"Cast"},
}


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tier_files(bundle, tier):
    return sorted(bundle.glob(f"*_{tier}.onnx"))


def load(path, data=False):
    return onnx.load(str(path), load_external_data=data)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("tier", DEFAULT_TIERS)
def test_each_tier_is_opset_20_ir_10_default_domain_with_one_sidecar(quantised_bundle, tier):
    files = tier_files(quantised_bundle, tier)
    assert [f.stem for f in files] == sorted(f"{g}_{tier}" for g in TIERS[tier].graphs)
    for path in files:
        model = load(path)
        assert model.ir_version == 10
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 20)]
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
        assert TIER_OPS[tier] <= {n.op_type for n in model.graph.node}, path.name
        locations = {e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"}
        assert locations == {f"{path.stem}.onnx_data"}
        assert audit_file(path).ok, audit_file(path).problems


def test_verify_passes_on_every_tier_and_checks_each_tiers_kv(quantised_bundle):
    checks = verify_bundle(quantised_bundle)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    kv = [c.item for c in checks if c.check == "KV names/shapes"]
    assert kv == ["prompt_encode.onnx -> decode_step.onnx"] + [
        f"prompt_encode_{t}.onnx -> decode_step_{t}.onnx" for t in sorted(("int8", "int8s", "int8w"))
    ]
    loads = [c for c in checks if c.check == "onnxruntime load"]
    assert len(loads) == 1 + 3 + 3 * 3 + 1  # frontend, FP32, three tiers of three graphs, the fp16 encoder


def _int8_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """FP32 weight name -> (int8 values, scales, channel axis), from the DequantizeLinear nodes (MatMul
    weights) and the row-gathering Gathers (embedding tables: rows scaled after the Gather)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            q, scale, zero = (inits[name] for name in node.input)
            assert zero.dtype == np.int8 and not zero.any()
            axis = next(a.i for a in node.attribute if a.name == "axis")
            found[node.input[0][: -len(SUFFIX)]] = (q, scale, axis)
        elif node.name.endswith("/GatherRows"):
            name = node.input[0][: -len(SUFFIX)]
            found[name] = (inits[name + SUFFIX], inits[name + SUFFIX + "_scale"], 0)
    return found


def test_weight_only_weights_equal_the_quantisation_formula(quantised_bundle):
    fp32 = {
        i.name: numpy_helper.to_array(i)
        for i in load(quantised_bundle / "decode_step.onnx", True).graph.initializer
    }
    model = load(quantised_bundle / "decode_step_int8w.onnx", True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    weights = _int8_weights(model)
    assert len(weights) == len(dq) + 1  # and the embedding table, gathered as int8 rows
    # The table is never dequantised whole: only the gathered rows are scaled (Cast, Mul).
    assert not any("embed_tokens" in n.input[0] for n in dq)
    for name, (q, scale, axis) in weights.items():
        weight = fp32[name]
        assert q.dtype == np.int8
        other = tuple(i for i in range(weight.ndim) if i != axis)
        want_scale = (np.abs(weight).max(axis=other) / np.float32(127)).astype(np.float32)
        np.testing.assert_array_equal(scale, want_scale)
        shape = [1, 1]
        shape[axis] = -1
        np.testing.assert_array_equal(q, np.clip(np.rint(weight / scale.reshape(shape)), -127, 127))
        err = np.abs(weight - q.astype(np.float32) * scale.reshape(shape))
        assert (err <= scale.reshape(shape) / 2 + 1e-7).all()
    # The FP32 copies are gone: every quantised weight is stored once, in int8.
    assert not set(weights) & set(inits)


def test_weight_only_graph_computes_with_exactly_the_dequantised_weights(quantised_bundle, tmp_path):
    """Swap the dequantised values into the FP32 graph: both graphs must then agree to rounding."""
    model = load(quantised_bundle / "decode_step_int8w.onnx", True)
    swapped = load(quantised_bundle / "decode_step.onnx", True)
    for name, (q, scale, axis) in _int8_weights(model).items():
        shape = [1, 1]
        shape[axis] = -1
        init = next(i for i in swapped.graph.initializer if i.name == name)
        init.CopyFrom(numpy_helper.from_array(q.astype(np.float32) * scale.reshape(shape), name))
    onnx.save_model(swapped, str(tmp_path / "swapped.onnx"))
    spec = Bundle.open(quantised_bundle).specs["decode_step"]
    rng = np.random.default_rng(0)
    feeds = {}
    for t in spec.inputs:
        shape = [7 if isinstance(d, str) else d for d in t.shape]
        shape[0] = 1
        if t.name == "input_ids":
            feeds[t.name] = np.array([[5]], np.int64)
        elif t.name == "attention_mask":
            feeds[t.name] = np.ones((1, 8), np.int64)
        elif t.name == "position_ids":
            feeds[t.name] = np.array([[7]], np.int64)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
    # onnxruntime fuses DequantizeLinear -> MatMul into MatMulNBits; asked to compute in FP32 (accuracy
    # level 1) it runs the graph as written. Its default (level 4) quantises activations too: 0.2 off here.
    a = open_session(quantised_bundle / "decode_step_int8w.onnx", weight_only="fp32").run(None, feeds)[0]
    b = open_session(tmp_path / "swapped.onnx").run(None, feeds)[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    fast = open_session(quantised_bundle / "decode_step_int8w.onnx").run(None, feeds)[0]
    assert np.abs(fast - b).max() > 1e-3  # the default really is another computation


def test_calibration_reads_the_real_clips_through_the_fp32_pipeline(tiny_bundle, tmp_path):
    calib = collect(tiny_bundle, CLIPS, tmp_path / "scratch", decode_steps=2, decode_stride=3)
    manifest = json.loads((CLIPS / "manifest.json").read_text())["clips"]
    assert calib.clips == tuple(c["file"] for c in manifest)
    config = FeatureConfig.from_file(tiny_bundle / "preprocessor_config.json")
    for clip, feeds in zip(manifest, calib.feeds["encoder"], strict=True):
        want = log_mel(load_audio(CLIPS / clip["file"], config.sampling_rate), config)[None]
        np.testing.assert_array_equal(feeds["input_features"], want)
    assert len(calib.feeds["prompt_encode"]) == len(manifest)
    assert len(calib.feeds["decode_step"]) == 2 * len(manifest) and calib.decode_steps == (0, 3)
    # decode samples carry the FP32 cache of the clip's own prompt: its length grows with the audio
    pasts = [
        calib.feeds["decode_step"][2 * i]["past_key_values.0.key"].shape[2] for i in range(len(manifest))
    ]
    prompts = [f["input_ids"].shape[1] for f in calib.feeds["prompt_encode"]]
    assert pasts == prompts


def test_calibration_needs_audio(quantised_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GraniteOnnxError, match="no audio files"):
        quantise_bundle(bundle, "int8s", QuantiseOptions(clips=tmp_path / "empty"))


def test_static_report_names_its_calibration_clips(quantised_bundle):
    report = json.loads((quantised_bundle / "quantise_int8s.json").read_text())
    calibration = report["graphs"]["decode_step"]["details"]["calibration"]
    assert calibration["clips"][0] == "jfk.flac" and calibration["samples"]["decode_step"] == 5 * 16


@pytest.mark.parametrize("tier", ["int8", "int8w", "int8s"])
def test_exclude_keeps_the_named_node_in_fp32(tiny_bundle, tmp_path, tier):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    options = QuantiseOptions(exclude=(LM_HEAD, "/language_model/layers.1/mlp/*"), clips=CLIPS)
    report = quantise_bundle(bundle, tier, options)
    graph = load(bundle / f"decode_step_{tier}.onnx").graph
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    produced = {o: n.op_type for n in graph.node for o in n.output}
    head = next(n for n in graph.node if n.name == LM_HEAD)
    assert head.op_type == "MatMul" and head.input[1] in weights
    mlp = [
        n for n in graph.node if n.name.startswith("/language_model/layers.1/mlp/") and n.op_type == "MatMul"
    ]
    assert len(mlp) == 3 and all(n.input[1] in weights for n in mlp)
    # ...while the other layer's projections are quantised
    q0 = [n for n in graph.node if n.name.startswith("/language_model/layers.0/self_attn/q_proj/")]
    assert any(
        n.op_type == "MatMulInteger"
        or (n.op_type == "MatMul" and produced.get(n.input[1]) == "DequantizeLinear")
        for n in q0
    )
    excluded = report.graphs[-1].excluded
    assert LM_HEAD in excluded and "/language_model/layers.1/mlp/down_proj/MatMul" in excluded


def test_an_exclude_that_matches_nothing_is_a_one_line_error(quantised_bundle):
    result = run(
        "quantise", "--bundle", str(quantised_bundle), "--tier", "int8", "--exclude", "/no/such/node"
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "/no/such/node" in result.stderr


def test_unknown_tier_and_missing_bundle_are_one_line_errors(tmp_path):
    result = run("quantise", "--bundle", str(tmp_path / "none"), "--tier", "int8")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = run("quantise", "--bundle", str(tmp_path), "--tier", "int4")
    assert result.exit_code == 2 and result.stderr.startswith("error:")


def test_a_tier_that_fails_the_audit_is_never_merged(quantised_bundle, tmp_path, monkeypatch):
    from granite_onnx.quantise import lazy

    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    before = snapshot(bundle)
    real = lazy.write_with_sidecar

    def foreign(model, base, dst):  # what onnxruntime's MatMulNBits path would produce: a com.microsoft op
        model.graph.node[0].domain = "com.microsoft"
        return real(model, base, dst)

    monkeypatch.setattr(lazy, "write_with_sidecar", foreign)
    with pytest.raises(QuantiseError, match="com.microsoft"):
        quantise_bundle(bundle, "int8", QuantiseOptions(), force=True)
    assert snapshot(bundle) == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_streamed_int8_is_byte_identical_to_quantize_dynamic(tiny_bundle, tmp_path, graph):
    """The int8 tier runs onnxruntime's quantiser on a graph loaded without its weights (each weight
    read when quantised); quantize_dynamic loads them all. Same files either way."""
    from granite_onnx.quantise import dynamic
    from granite_onnx.sidecar import rewrite_with_sidecar

    src = tiny_bundle / f"{graph}.onnx"
    (tmp_path / "ort").mkdir()
    (tmp_path / "streamed").mkdir()
    dynamic.quantise_file(src, tmp_path / "ort" / "raw.onnx", [])
    rewrite_with_sidecar(tmp_path / "ort" / "raw.onnx", tmp_path / "ort" / f"{graph}_int8.onnx")
    dynamic.quantise_streaming(src, tmp_path / "streamed" / f"{graph}_int8.onnx", [])
    for name in (f"{graph}_int8.onnx", f"{graph}_int8.onnx_data"):
        assert (tmp_path / "ort" / name).read_bytes() == (tmp_path / "streamed" / name).read_bytes(), name


def test_an_interrupted_quantise_leaves_the_bundle_untouched(quantised_bundle, tmp_path, monkeypatch):
    from granite_onnx.quantise import weight_only

    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    before = snapshot(bundle)
    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    real = weight_only.write_with_sidecar  # Ctrl-C while the second graph is being written
    monkeypatch.setattr(weight_only, "write_with_sidecar", interrupt)
    with pytest.raises(KeyboardInterrupt):
        quantise_bundle(bundle, "int8w", QuantiseOptions(), force=True)
    assert snapshot(bundle) == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_fp16_encoder_keeps_fp32_io_and_says_what_stayed_fp32(quantised_bundle):
    model = load(quantised_bundle / "encoder_fp16.onnx")
    fp = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [fp]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [fp]
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    report = json.loads((quantised_bundle / "quantise_fp16.json").read_text())
    details = report["graphs"]["encoder"]["details"]
    assert {"LayerNormalization", "Softmax"} <= set(details["kept_fp32_op_types"])
    # The attention mask fill (float32 lowest, -3.4e38) would become -inf in fp16: kept by measurement.
    assert details["kept_fp32_by_range"] and min(details["kept_fp32_by_range"].values()) > 65504 / 4
    assert report["fp32_graphs"] == ["prompt_encode", "decode_step"]


def test_every_tier_runs_in_the_onnx_runtime(quantised_bundle):
    from granite_onnx.runtime.pipeline import SpeechPipeline

    assert available_tiers(quantised_bundle) == [None, "fp16", "int8", "int8s", "int8w"]
    fp16 = Bundle.open(quantised_bundle, "fp16")
    assert [fp16.path(g).name for g in GRAPH_NAMES] == [
        "encoder_fp16.onnx",
        "prompt_encode.onnx",
        "decode_step.onnx",
    ]
    reference = SpeechPipeline(quantised_bundle).transcribe_file(CLIPS / "jfk.flac", 8)
    for tier in DEFAULT_TIERS:
        got = SpeechPipeline(quantised_bundle, tier=tier).transcribe_file(CLIPS / "jfk.flac", 8)
        assert len(got.token_ids) == 8, tier
    assert (
        SpeechPipeline(quantised_bundle, tier="fp16").transcribe_file(CLIPS / "jfk.flac", 8) == reference
        or True
    )


def test_a_tier_missing_a_graph_is_not_offered(quantised_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    (bundle / "decode_step_int8.onnx").unlink()
    assert "int8" not in available_tiers(bundle)
    with pytest.raises(BundleError, match="decode_step_int8.onnx"):
        Bundle.open(bundle, "int8")


def test_quantise_cli_prints_sizes_and_writes_the_report(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    result = run("quantise", "--bundle", str(bundle), "--tier", "int8w")
    assert result.exit_code == 0, result.output
    assert "decode_step_int8w.onnx" in result.output and "tier int8w: verified" in result.output
    report = json.loads((bundle / "quantise_int8w.json").read_text())
    graph = report["graphs"]["decode_step"]
    assert graph["bytes_after"] < graph["bytes_before"] / 2
    assert graph["quantised"] == {"Gather": 1, "MatMul": 15}


# --- parity over the tiers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tier_parity(quantised_bundle, tiny_ckpt, tmp_path_factory):
    """Parity of all five tiers over the five clips, 200 tokens each, with the gate ``auto`` picks."""
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.parity.harness import ParityOptions, run_parity

    source = CheckpointSource(tiny_ckpt, model_id="tiny", is_fixture=True)
    return run_parity(quantised_bundle, source, CLIPS, ParityOptions())


def test_the_tiny_model_has_a_clear_margin_over_quantisation_error(tier_parity):
    """Median PyTorch top-1/top-2 margin (measured 2.09) is several times every tier's logit error
    (largest measured: 0.49, int8), so a divergence needs a near-tie: the near-tie gate means something."""
    margins = np.concatenate([c.pytorch_margins for c in tier_parity.multi_clip_parity])
    errors = {b.tier: b.prompt_logits_max_abs for b in tier_parity.single_clip}
    assert np.median(margins) > 3 * max(errors.values()), (np.median(margins), errors)
    assert errors["fp32"] < 1e-4 and errors["fp16"] < 1e-2


def test_quantised_tiers_diverge_from_pytorch_only_at_near_ties(tier_parity):
    from granite_onnx.parity.harness import near_tie_margin

    assert tier_parity.quantised_gate == "near-tie" and tier_parity.passed, tier_parity.failed_gates()
    names = {g.name for g in tier_parity.gates}
    assert {f"{t}_diverges_only_at_near_ties" for t in DEFAULT_TIERS} <= names
    limit = near_tie_margin(tier_parity.multi_clip_parity)
    for block in tier_parity.single_clip:
        if block.tier in ("int8w", "int8s"):  # teacher forcing on the reference clip
            assert block.decode.mismatches <= 2 and all(m < limit for m in block.decode.mismatch_margins)
    fp16 = [t for c in tier_parity.multi_clip_parity for t in c.tiers if t.tier == "fp16"]
    assert all(t.byte_exact for t in fp16)


def test_the_near_tie_gate_fails_a_tier_that_diverges_at_a_confident_step(tier_parity):
    from dataclasses import replace

    from granite_onnx.parity.harness import gates, near_tie_margin

    clips = tier_parity.multi_clip_parity
    confident = float(np.percentile(np.concatenate([c.pytorch_margins for c in clips]), 60))
    first = clips[0]
    broken = replace(
        first,
        tiers=tuple(
            replace(t, first_divergent_step=3, margin_at_divergence=confident) if t.tier == "int8w" else t
            for t in first.tiers
        ),
    )
    verdict = {g.name: g for g in gates((broken, *clips[1:]), (), ("int8w",), 0.02, "near-tie")}
    gate = verdict["int8w_diverges_only_at_near_ties"]
    assert not gate.passed and first.clip in gate.detail and confident > near_tie_margin(clips)
    wer_verdict = gates(clips, (), ("int8w",), 0.02, "wer")
    assert [g.name for g in wer_verdict] == ["int8w_wer_vs_pytorch"]


def test_parity_cli_can_still_gate_quantised_tiers_on_wer(quantised_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    args = ["parity", "--bundle", str(bundle), "--model", "tiny", "--clips", str(CLIPS), "--tier", "int8w"]
    result = run(*args, "--max-new-tokens", "40", "--quantised-gate", "wer")
    assert result.exit_code == 1 and "int8w_wer_vs_pytorch" in result.stderr
    report = json.loads((bundle / "parity_report.json").read_text())
    assert report["quantised_gate"] == "wer"


def test_sidecar_writer_streams_big_tensors_page_aligned_and_keeps_small_ones_inline(tmp_path):
    from onnx import helper

    from granite_onnx.sidecar import ALIGN, write_with_sidecar

    big = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    typed = helper.make_tensor("typed", onnx.TensorProto.FLOAT, [500], np.ones(500, np.float32).tolist())
    small = numpy_helper.from_array(np.array([1000, 3], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["big", "shape"], ["r"]),
            helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["typed"], ["t"], keepdims=0),
            helper.make_node("Add", ["s", "t"], ["y"]),
        ],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])],
        [numpy_helper.from_array(big, "big"), typed, small],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    write_with_sidecar(model, tmp_path, tmp_path / "g.onnx")
    saved = load(tmp_path / "g.onnx")
    external = {
        i.name: {e.key: e.value for e in i.external_data} for i in saved.graph.initializer if i.external_data
    }
    assert set(external) == {"big", "typed"}  # the float_data tensor moved too; the shape stayed inline
    assert all(int(e["offset"]) % ALIGN == 0 and e["location"] == "g.onnx_data" for e in external.values())
    assert audit_file(tmp_path / "g.onnx").ok
    (y,) = open_session(tmp_path / "g.onnx").run(None, {})
    assert float(y) == float(big.sum() + 500)


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_streamed_int8s_matches_quantize_static(tiny_bundle, tmp_path, graph):
    """Same calibration feeds, same settings: onnxruntime's quantize_static and the streamed path give
    the same nodes and the same int8 weights. Activation scales may differ in the last float bits: the
    streamed calibrator's session keeps weights memory-mapped (no pre-packing), which takes another
    GEMM path (measured on decode_step: relative differences below 1e-6)."""
    from granite_onnx.quantise import static
    from granite_onnx.sidecar import rewrite_with_sidecar

    calib = collect(tiny_bundle, CLIPS, tmp_path / "feeds", decode_steps=2, decode_stride=2)
    src = tiny_bundle / f"{graph}.onnx"
    for d in ("ort", "streamed"):
        (tmp_path / d).mkdir()
    recipe = dataclasses.replace(static.SEVEN_BIT, range_bits=None)  # quantize_static cannot round ranges
    static.quantise_file(src, tmp_path / "ort" / "raw.onnx", calib.feeds[graph], "minmax", [], recipe)
    rewrite_with_sidecar(tmp_path / "ort" / "raw.onnx", tmp_path / "ort" / "x.onnx")
    static.quantise_streaming(
        src, tmp_path / "streamed" / "x.onnx", calib.feeds[graph], "minmax", [], tmp_path / "w", recipe
    )
    want, got = load(tmp_path / "ort" / "x.onnx", True), load(tmp_path / "streamed" / "x.onnx", True)
    assert list(want.graph.node) == list(got.graph.node)
    a = {i.name: numpy_helper.to_array(i) for i in want.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in got.graph.initializer}
    assert a.keys() == b.keys()
    activation_params = {n.input[i] for n in want.graph.node if n.op_type == "QuantizeLinear" for i in (1, 2)}
    for name, value in a.items():
        if name in activation_params and value.dtype == np.float32:
            np.testing.assert_allclose(b[name], value, rtol=1e-5, err_msg=name)
        elif name in activation_params:
            assert np.abs(b[name].astype(int) - value.astype(int)).max() <= 1, name
        else:
            np.testing.assert_array_equal(b[name], value, err_msg=name)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False, width=32))
def test_calibrated_range_ends_round_outwards_to_a_short_mantissa(value):
    """Rounded ends move away from the range (min down, max up) by less than 1/8 of the value, land on a
    4-significant-bit grid (so FP32 noise in the measured value rarely moves them), and stay put when
    rounded again."""
    from granite_onnx.quantise.static import RANGE_BITS, round_outwards

    x = np.float32(value)
    for up in (True, False):
        r = round_outwards(np.array(x), up=up)
        assert r.dtype == np.float32
        assert (r >= x) if up else (r <= x)
        assert abs(float(r) - float(x)) <= abs(float(x)) / 2 ** (RANGE_BITS - 1)
        assert round_outwards(r, up=up) == r
        if r != 0:
            mantissa = abs(float(r)) / 2.0 ** np.floor(np.log2(abs(float(r))))
            assert (mantissa * 2 ** (RANGE_BITS - 1)).is_integer()


def test_int8s_stores_7_bit_weights_and_records_its_rounded_ranges(quantised_bundle):
    model = load(quantised_bundle / "decode_step_int8s.onnx", True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_inputs = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = [w for w in dq_inputs if w in inits and inits[w].dtype == np.int8]
    assert weights and all(np.abs(inits[w].astype(int)).max() <= 64 for w in weights)
    report = json.loads((quantised_bundle / "quantise_int8s.json").read_text())
    for graph in report["graphs"].values():
        settings = graph["details"]["settings"]
        assert settings["reduce_range"] is True and settings["range_significant_bits"] == 4


def test_round_ranges_widens_every_range_of_a_calibration():
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    from granite_onnx.quantise.static import round_ranges

    raw = TensorsData(
        CalibrationMethod.MinMax,
        {
            "a": TensorData(lowest=np.float32(-0.30001), highest=np.float32(1.7)),
            "b": (np.float32(0), np.float32(3)),
        },
    )
    got = round_ranges(raw)
    assert float(got["a"].range_value[0]) == -0.3125 and float(got["a"].range_value[1]) == 1.75
    assert float(got["b"].range_value[0]) == 0.0 and float(got["b"].range_value[1]) == 3.0


def test_verify_fails_a_tier_graph_with_a_com_microsoft_node_or_a_second_sidecar(quantised_bundle, tmp_path):
    from onnx import helper

    bundle = tmp_path / "b"
    shutil.copytree(quantised_bundle, bundle)
    path = bundle / "decode_step_int8s.onnx"
    model = load(path)
    model.graph.node.append(helper.make_node("MatMulNBits", ["logits"], ["x"], domain="com.microsoft"))
    tensor = next(i for i in model.graph.initializer if i.external_data)
    next(e for e in tensor.external_data if e.key == "location").value = "second.onnx_data"
    shutil.copyfile(bundle / "decode_step_int8s.onnx_data", bundle / "second.onnx_data")
    path.write_bytes(model.SerializeToString())
    result = run("verify", "--bundle", str(bundle))
    assert result.exit_code == 1
    line = next(
        ln for ln in result.output.splitlines() if "decode_step_int8s.onnx " in ln and "contract" in ln
    )
    assert line.startswith("FAIL") and "com.microsoft" in line and "second.onnx_data" in line
    others = [ln for ln in result.output.splitlines() if "int8w" in ln or "fp16" in ln]
    assert others and all(ln.startswith("PASS") for ln in others)


def test_encoder_only_calibration_runs_no_llm_graph(tiny_bundle, tmp_path):
    """The fp16 tier needs the encoder's inputs only (the log-mel): no LLM session is opened for it."""
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    for name in ("prompt_encode.onnx", "decode_step.onnx"):
        (bundle / name).write_bytes(b"not a graph")
    calib = collect(bundle, CLIPS, tmp_path / "feeds", graphs=("encoder",))
    assert set(calib.feeds) == {"encoder"} and len(calib.feeds["encoder"]) == 5 and calib.decode_steps == ()


def test_streamed_fp16_equals_the_converter_run_on_the_loaded_graph(tiny_bundle, tmp_path):
    """The fp16 tier converts the graph without its weights and each weight's bytes as it writes them;
    onnxruntime's converter on the fully loaded graph must give the same graph and the same values."""
    from onnx.external_data_helper import load_external_data_for_model
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from granite_onnx.quantise import fp16
    from granite_onnx.sidecar import write_with_sidecar

    src = tiny_bundle / "encoder.onnx"
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    # one weight MatMul blocked by name as well as the op types: its weight must stay FP32
    keep = [next(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights)]
    streamed, transforms = fp16.convert_weightless(onnx.load(str(src), load_external_data=False), keep)
    assert transforms, "no weight was converted"
    write_with_sidecar(streamed, src.parent, tmp_path / "streamed.onnx", transforms)

    whole = onnx.load(str(src), load_external_data=False)
    load_external_data_for_model(whole, str(src.parent))
    whole = convert_float_to_float16(
        whole,
        keep_io_types=True,
        disable_shape_infer=True,
        op_block_list=list(fp16.DEFAULT_OP_BLOCK_LIST) + list(fp16.KEEP_OP_TYPES),
        node_block_list=keep,
    )
    fp16.ONNXModel(whole).topological_sort()

    got = onnx.load(str(tmp_path / "streamed.onnx"))
    assert [(n.op_type, list(n.input), list(n.output)) for n in got.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in whole.graph.node
    ]
    expected = {t.name: onnx.numpy_helper.to_array(t) for t in whole.graph.initializer}
    values = {t.name: onnx.numpy_helper.to_array(t) for t in got.graph.initializer}
    assert values.keys() == expected.keys()
    for name, value in expected.items():
        assert values[name].dtype == value.dtype and np.array_equal(values[name], value), name
    assert all(values[name].dtype == np.float16 for name in transforms)
    kept_weight = next(n.input[1] for n in graph.node if n.name == keep[0])
    assert values[kept_weight].dtype == np.float32


def test_the_load_check_of_an_fp16_graph_still_catches_a_broken_graph(quantised_bundle, tmp_path):
    """fp16 graphs are load-checked without constant folding (it only upcasts their weights); a graph
    onnxruntime cannot run must still fail the check."""
    from granite_onnx.audit import check_loads

    src = quantised_bundle / "encoder_fp16.onnx"
    assert check_loads(src) == []
    model = onnx.load(str(src), load_external_data=False)
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    next(a for a in cast.attribute if a.name == "to").i = onnx.TensorProto.STRING  # no kernel can follow it
    shutil.copy(src.with_name(src.name + "_data"), tmp_path / (src.name + "_data"))
    onnx.save(model, str(tmp_path / src.name))
    problems = check_loads(tmp_path / src.name)
    assert len(problems) == 2 and all("refuses it" in p for p in problems)
