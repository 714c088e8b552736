"""The file-level graph contract, asserted on every exported file."""

from __future__ import annotations

import hashlib
import json
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from granite_onnx.audit import audit_file
from granite_onnx.checkpoint import PROCESSOR_FILES
from granite_onnx.export.writer import INLINE_LIMIT, deduplicate_initializers, save_with_sidecar
from granite_onnx.specs import GRAPH_NAMES, ModelDims, graph_specs

GRAPHS = list(GRAPH_NAMES)


@pytest.fixture(scope="module")
def models(tiny_bundle) -> dict[str, onnx.ModelProto]:
    return {name: onnx.load(str(tiny_bundle / f"{name}.onnx"), load_external_data=False) for name in GRAPHS}


@pytest.mark.parametrize("name", GRAPHS)
def test_ir10_opset20_default_domain_only(models, name):
    model = models[name]
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 20)]
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


@pytest.mark.parametrize("name", GRAPHS)
def test_one_sidecar_0644_and_nothing_large_inline(tiny_bundle, models, name):
    model = models[name]
    locations = {
        entry.value
        for init in model.graph.initializer
        for entry in init.external_data
        if entry.key == "location"
    }
    assert locations == {f"{name}.onnx_data"}
    assert all(
        len(i.raw_data) <= INLINE_LIMIT
        for i in model.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL
    )
    for suffix in (".onnx", ".onnx_data"):
        mode = stat.S_IMODE((tiny_bundle / f"{name}{suffix}").stat().st_mode)
        assert mode == 0o644, f"{name}{suffix} has mode {oct(mode)}"
    assert sorted(p.name for p in tiny_bundle.glob(f"{name}*")) == [f"{name}.onnx", f"{name}.onnx_data"]
    assert audit_file(tiny_bundle / f"{name}.onnx").ok


@pytest.mark.parametrize("name", GRAPHS)
def test_io_names_dtypes_and_symbolic_dims_follow_the_spec(tiny_bundle, models, name):
    dims = ModelDims.from_file(tiny_bundle / "config.json")
    spec = graph_specs(dims)[name]
    graph = models[name].graph

    def described(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
            out.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape))
        return out

    assert described(graph.input) == [(t.name, t.dtype, t.shape) for t in spec.inputs]
    assert described(graph.output) == [(t.name, t.dtype, t.shape) for t in spec.outputs]


@pytest.mark.parametrize("name", GRAPHS)
def test_no_initializer_stored_twice(tiny_bundle, name):
    model = onnx.load(str(tiny_bundle / f"{name}.onnx"))
    digests = [
        hashlib.sha256(numpy_helper.to_array(i).tobytes()).hexdigest()
        for i in model.graph.initializer
        if len(numpy_helper.to_array(i).tobytes()) > INLINE_LIMIT
    ]
    assert len(digests) == len(set(digests))


def test_deduplication_keeps_one_copy_and_the_same_outputs(tmp_path):
    """A byte-identical copy and a transposed copy (a folded tied lm_head) collapse into one weight."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 48)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("MatMul", ["x", "w_copy"], ["b"]),
        helper.make_node("MatMul", ["a", "w_t"], ["c"]),
        helper.make_node("Add", ["c", "x"], ["y0"]),
        helper.make_node("Add", ["a", "b"], ["y1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 32])],
        [
            helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, [2, 32]),
            helper.make_tensor_value_info("y1", onnx.TensorProto.FLOAT, [2, 48]),
        ],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(w.copy(), "w_copy"),
            numpy_helper.from_array(np.ascontiguousarray(w.T), "w_t"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    x = rng.standard_normal((2, 32)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert deduplicate_initializers(model) == 2
    assert [i.name for i in model.graph.initializer] == ["w"]
    save_with_sidecar(model, tmp_path / "g.onnx")
    after = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, {"x": x})
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert (tmp_path / "g.onnx_data").stat().st_size == w.nbytes


def test_bundle_holds_the_processor_files_and_a_report(tiny_bundle, tiny_ckpt):
    expected = [f for f in PROCESSOR_FILES if (tiny_ckpt / f).is_file()]
    assert {
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
    } <= set(expected)
    for f in expected:
        assert (tiny_bundle / f).read_bytes() == (tiny_ckpt / f).read_bytes()
        assert stat.S_IMODE((tiny_bundle / f).stat().st_mode) == 0o644
    report = json.loads((tiny_bundle / "export_report.json").read_text())
    assert [g["name"] for g in report["graphs"]] == ["frontend", *GRAPHS]
    assert all(g["max_abs_error"]["other"] < 1e-3 for g in report["graphs"] if g["name"] != "frontend")
    assert report["graphs"][0]["max_abs_error"]["numpy front-end"] <= 1e-4
    assert not list(tiny_bundle.parent.glob(".*partial*"))
