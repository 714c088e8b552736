"""The 4-bit weight-only tiers: the formula, GPTQ against its references, the ai.onnx form onnxruntime fuses,
and the audit's one opset-21 exception."""

from __future__ import annotations

import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from granite_onnx.audit import audit_file, check_header
from granite_onnx.errors import GraniteOnnxError
from granite_onnx.quantise import int4
from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle

RNG = np.random.default_rng(0)


def _correlated(n: int, k: int, seed: int = 1) -> np.ndarray:
    """Inputs whose features are strongly correlated, as a layer's activations are (GPTQ's case)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    scale = np.exp(rng.standard_normal(k))  # a few loud features
    return (rng.standard_normal((n, k)) @ mix) * scale


# --- the formula -------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_is_the_nearest_level_of_each_block(symmetric: bool):
    w = RNG.standard_normal((64, 24)) + (0 if symmetric else 0.7)
    q, grid = int4.rtn(w, 16, symmetric)
    low, high = grid.bounds
    assert q.min() >= low and q.max() <= high and grid.scale.shape == (4, 24)
    error = np.abs(w - int4.dequantise(q, grid, 16))
    assert np.all(error <= np.repeat(grid.scale, 16, axis=0) / 2 + 1e-6)  # never more than half a step
    if symmetric:
        assert np.allclose(grid.scale, np.abs(w.reshape(4, 16, 24)).max(1) / 7)
    else:
        assert grid.zero_point.min() >= 0 and grid.zero_point.max() <= 15


def test_the_asymmetric_grid_uses_the_range_of_a_one_sided_block():
    w = np.abs(RNG.standard_normal((32, 8)))  # every weight positive
    sym_q, sym = int4.rtn(w, 32, True)
    asym_q, asym = int4.rtn(w, 32, False)
    err = lambda q, g: float(np.abs(w - int4.dequantise(q, g, 32)).mean())  # noqa: E731
    assert err(asym_q, asym) < 0.6 * err(sym_q, sym)


# --- GPTQ ----------------------------------------------------------------------------------------------


def test_the_deterministic_linear_algebra_matches_numpy():
    x = _correlated(200, 48)
    h = int4.gram([x], 48)
    assert np.allclose(h, x.T @ x, rtol=1e-12, atol=1e-9)
    h += 0.01 * np.mean(np.diag(h)) * np.eye(48)
    lower = int4.cholesky(h)
    assert np.allclose(lower, np.linalg.cholesky(h), rtol=1e-10, atol=1e-10)
    assert np.allclose(int4.lower_inverse(lower), np.linalg.inv(lower), rtol=1e-9, atol=1e-10)
    upper = int4.inverse_cholesky_upper(h)
    assert np.allclose(upper.T @ upper, np.linalg.inv(h), rtol=1e-8, atol=1e-10)
    assert np.allclose(upper, np.triu(upper))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_uncorrelated_inputs_is_rtn(symmetric: bool):
    """A diagonal Hessian moves no error between rows: GPTQ is then exactly round to nearest."""
    w = RNG.standard_normal((64, 16))
    diagonal = np.diag(np.exp(RNG.standard_normal(64)))
    q, grid = int4.gptq(w, diagonal, 32, symmetric=symmetric)
    q_rtn, grid_rtn = int4.rtn(w, 32, symmetric)
    assert np.array_equal(q, q_rtn) and np.array_equal(grid.scale, grid_rtn.scale)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_moves_the_layer_output_less_than_rtn(symmetric: bool):
    """What GPTQ minimises, ||X (W - dq)||^2, on correlated inputs: measured 55-60 % of RTN's here."""
    x = _correlated(400, 64)
    w = RNG.standard_normal((64, 32))
    h = int4.gram([x], 64)
    q_g, grid_g = int4.gptq(w, h, 32, symmetric=symmetric)
    q_r, grid_r = int4.rtn(w, 32, symmetric)
    gptq_error = int4.output_error(h, w, q_g, grid_g, 32)
    rtn_error = int4.output_error(h, w, q_r, grid_r, 32)
    assert gptq_error < 0.8 * rtn_error
    direct = float(np.sum((x @ (w - int4.dequantise(q_g, grid_g, 32))) ** 2))
    assert np.isclose(gptq_error, direct, rtol=1e-6)  # output_error is that norm


def test_an_input_that_is_never_active_gets_weight_zero():
    x = _correlated(100, 32)
    x[:, 5] = 0.0
    q, grid = int4.gptq(RNG.standard_normal((32, 8)), int4.gram([x], 32), 32)
    assert np.all(int4.dequantise(q, grid, 32)[5] == 0)


# --- the graph onnxruntime fuses -----------------------------------------------------------------------


def _one_matmul(path: Path, k: int = 64, n: int = 24) -> np.ndarray:
    """A FP32 graph x [b, k] @ W -> y with W in a sidecar, as the export writes LLM weights."""
    w = RNG.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/lm_head/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + "_data", size_threshold=0)
    return w


@pytest.mark.parametrize("symmetric", [True, False])
def test_the_written_graph_is_plain_ai_onnx_and_onnxruntime_fuses_it(tmp_path: Path, symmetric: bool):
    src = tmp_path / "decode_step.onnx"
    w = _one_matmul(src)
    model = onnx.load(str(src), load_external_data=False)
    counts, records = int4.quantise_model(model, tmp_path, set(), 32, symmetric=symmetric)
    assert counts == {"MatMul": 1} and len(records) == 1
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 32}
    weights = {i.name: i for i in model.graph.initializer}
    assert weights[dq.input[0]].data_type == (TensorProto.INT4 if symmetric else TensorProto.UINT4)
    assert [o.version for o in model.opset_import] == [21] and all(n.domain == "" for n in model.graph.node)
    out = tmp_path / "decode_step_int4w.onnx"
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    # the graph's own semantics (accuracy level 1: FP32 activations) is x @ dequantise(q, grid)
    q = numpy_helper.to_array(weights[dq.input[0]]).astype(np.int8)
    grid = int4.Grid(
        numpy_helper.to_array(weights[dq.input[1]]),
        None if symmetric else numpy_helper.to_array(weights[dq.input[2]]).astype(np.uint8),
    )
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    got = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, x @ int4.dequantise(q, grid, 32), atol=1e-4)
    assert float(np.abs(got - x @ w).max()) < 0.2 * float(np.abs(x @ w).max())  # and it is still W
    fused = [
        n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx"), load_external_data=False).graph.node
    ]
    assert fused == ["MatMulNBits"]  # DQMatMulToMatMulNBits took it: the fast kernel, in memory only


def test_a_shared_or_misshapen_weight_stays_fp32(tmp_path: Path):
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w"], ["y"], name="a"),
                helper.make_node("MatMul", ["x", "w"], ["z"], name="b"),  # shared: not fusable
                helper.make_node("MatMul", ["x2", "v"], ["u"], name="c"),  # K = 40: no whole block of 32
            ],
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, k]) for n, k in (("x", 64), ("x2", 40))],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z", "u")],
            initializer=[
                numpy_helper.from_array(RNG.standard_normal((64, 8)).astype(np.float32), "w"),
                numpy_helper.from_array(RNG.standard_normal((40, 8)).astype(np.float32), "v"),
            ],
        )
    )
    assert int4.matmul_targets(model, set(), 32) == {}


# --- the audit's exception ------------------------------------------------------------------------------


def test_opset_21_is_accepted_for_the_4_bit_tiers_only():
    model = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    for name in ("decode_step_int4w.onnx", "prompt_encode_int4w-rtn.onnx", "encoder_int4w-gptq-b16-sym.onnx"):
        assert check_header(model, Path(name)) == [], name
    for name in ("decode_step.onnx", "decode_step_int8w.onnx", "frontend.onnx", "decode_step_int4.onnx"):
        (problem,) = check_header(model, Path(name))
        assert "expected only ai.onnx 20" in problem, name


# --- the tiers on a bundle -----------------------------------------------------------------------------


def test_the_4_bit_tiers_on_the_tiny_bundle(tiny_bundle: Path, tmp_path: Path):
    from conftest import CLIPS

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    for tier in ("int4w", "int4w-gptq"):
        report = quantise_bundle(bundle, tier, QuantiseOptions(clips=CLIPS))
        graphs = {g.graph: g for g in report.graphs}
        assert set(graphs) == {"encoder", "prompt_encode", "decode_step"} and report.fp32_graphs == ()
        for name in ("prompt_encode", "decode_step"):
            assert graphs[name].details["opset"] == 21 and graphs[name].quantised["MatMul"] > 0
            assert graphs[name].details["sensitive_layers"]
            assert audit_file(bundle / f"{name}_{tier}.onnx").ok
        encoder = onnx.load(str(bundle / f"encoder_{tier}.onnx"), load_external_data=False)
        assert [o.version for o in encoder.opset_import] == [20]  # the encoder stays int8w, opset 20
    from granite_onnx.runtime.pipeline import SpeechPipeline

    tokens = SpeechPipeline(bundle, tier="int4w").transcribe_file(CLIPS / "jfk.flac", 8).token_ids
    assert len(tokens) == 8


def test_the_4_bit_tiers_refuse_a_ctc_bundle(tmp_path_factory):
    from conftest import CLIPS, family_checkpoint

    _, bundle = family_checkpoint(tmp_path_factory, "tiny-ctc")
    with pytest.raises(
        GraniteOnnxError, match=r"int4w quantises a language model, which a ctc bundle has none"
    ):
        quantise_bundle(bundle, "int4w", QuantiseOptions(clips=CLIPS))


def test_int4_storage_is_packed_two_per_byte():
    tensor = numpy_helper.from_array(
        np.arange(-8, 8, dtype=np.int8).reshape(4, 4).astype(ml_dtypes.int4), "q"
    )
    assert len(tensor.raw_data) == 8


# --- embedding rows ------------------------------------------------------------------------------------


def _one_table(path: Path, rows: int = 50, width: int = 64) -> np.ndarray:
    """A FP32 graph Gather(table, ids [b, s]) -> [b, s, width], the table in a sidecar."""
    table = RNG.standard_normal((rows, width)).astype(np.float32)
    table[7] = 0.0  # an all-zero row keeps scale 1 and levels 0
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], name="/embed_tokens/Gather")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["b", "s", width])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + "_data", size_threshold=0)
    return table


@pytest.mark.parametrize("table_bits", [8, 4])
def test_embedding_rows_are_gathered_before_they_are_scaled(tmp_path: Path, table_bits: int):
    """The table is never dequantised whole: the Gather reads int8 (or packed int4) rows and only those are
    scaled. The graph's rows equal the formula's bit for bit, and the 4-bit rows are RTN's levels."""
    src = tmp_path / "decode_step.onnx"
    table = _one_table(src)
    model = onnx.load(str(src), load_external_data=False)
    counts, _ = int4.quantise_model(model, tmp_path, set(), 32, table_bits=table_bits)
    assert counts == {"Gather": 1}
    assert "DequantizeLinear" not in {n.op_type for n in model.graph.node}
    assert all(n.domain == "" for n in model.graph.node)
    out = tmp_path / "decode_step_int4w.onnx"
    onnx.save(model, str(out))
    onnx.checker.check_model(str(out), full_check=True)
    ids = np.array([[3, 7, 49], [0, 3, 12]], np.int64)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    suffix = int4.SUFFIX if table_bits == 4 else "_int8w"
    q, scale = inits["table" + suffix], inits["table" + suffix + "_scale"]
    if table_bits == 8:
        want = q.astype(np.float32) * scale[:, None]
        bound = scale[:, None] / 2
    else:
        assert q.dtype == np.uint8 and q.shape == (50, 32) and scale.shape == (50, 2)
        want = int4.unpack_rows4(q, scale, 32)
        levels, grid = int4.rtn(table.T.astype(np.float64), 32)
        np.testing.assert_array_equal(want, int4.dequantise(levels, grid, 32).T.astype(np.float32))
        bound = np.repeat(scale, 32, axis=1) / 2
    np.testing.assert_array_equal(got, want[ids])
    assert (np.abs(want - table) <= bound + 1e-6).all()
    assert not want[7].any()
