"""The runtime's static KV cache and batch-1 decode_step (runtime/kv_cache.py): the same tokens and logits
as the exported graph run as it is, written in place, and clear errors where they cannot apply."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import CLIPS

from granite_onnx.errors import BundleError
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.bundle import available_tiers
from granite_onnx.runtime.kv_cache import CACHE_POSITION, StaticDecoder, static_cache_graph
from granite_onnx.runtime.lean import batch_specialised
from granite_onnx.runtime.pipeline import SpeechPipeline
from granite_onnx.specs import DECODE_STEP, present_name

CLIP_NAMES = ("jfk.flac", "librispeech-61-70968-0000.flac")


def _prompt(pipe: SpeechPipeline, clip: str):
    audio = load_audio(CLIPS / clip, pipe.bundle.features.sampling_rate)
    features, tokens = pipe.features(audio)
    return pipe.prompt_ids(tokens), pipe.audio_embeds(features)


@pytest.fixture(scope="module")
def decode_model(tiny_bundle) -> onnx.ModelProto:
    return onnx.load(str(tiny_bundle / "decode_step.onnx"), load_external_data=False)


def test_rewritten_graph_is_checked_opset_20_ai_onnx(decode_model, tiny_bundle):
    layers = SpeechPipeline(tiny_bundle, graphs=(DECODE_STEP,)).bundle.dims.num_layers
    model = static_cache_graph(decode_model, layers)
    # The checker reads external data relative to the working folder: check the weights-inline copy.
    onnx.checker.check_model(static_cache_graph(onnx.load(str(tiny_bundle / "decode_step.onnx")), layers))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 20)]
    assert {n.domain for n in model.graph.node} == {""}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ScatterND") == 2 * layers
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(produced[present_name(i, k)] == "ScatterND" for i in range(layers) for k in ("key", "value"))
    assert CACHE_POSITION in [i.name for i in model.graph.input]
    # The caller's graph is untouched (the rewrite works on a copy).
    assert "ScatterND" not in [n.op_type for n in decode_model.graph.node]


def test_a_present_that_is_not_a_concat_is_refused_in_one_line(decode_model):
    model = onnx.ModelProto()
    model.CopyFrom(decode_model)
    for node in model.graph.node:
        if present_name(0, "value") in node.output:
            node.input[0], node.input[1] = (
                node.input[1],
                node.input[0],
            )  # Concat(new, past): not the cache form
    with pytest.raises(BundleError, match=r"present\.0\.value is not Concat") as err:
        static_cache_graph(model, 2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_static_cache_and_batch_1_generate_exactly_what_the_file_does(quantised_bundle, clip):
    """Every tier: tokens equal and every step's top-2 margin equal to 1e-5 (here they are bit-equal)."""
    for tier in available_tiers(quantised_bundle):
        file = SpeechPipeline(quantised_bundle, tier, kv_cache="concat", decode_batch=None)
        lean = SpeechPipeline(quantised_bundle, tier)  # the defaults: static cache, batch 1
        assert (lean.kv_cache, lean.decode_batch) == ("static", 1)
        ids, embeds = _prompt(file, clip)
        want, got = file.generate(ids, embeds, 24), lean.generate(ids, embeds, 24)
        assert got.token_ids == want.token_ids, tier
        assert len(want.token_ids) >= 8  # a clear-margin fixture: the comparison spans many steps
        np.testing.assert_allclose(got.margins, want.margins, atol=1e-5, err_msg=str(tier))


def test_a_step_writes_one_row_in_place_and_matches_the_concatenated_present(tiny_bundle):
    file = SpeechPipeline(tiny_bundle, kv_cache="concat", decode_batch=None)
    lean = SpeechPipeline(tiny_bundle)
    ids, embeds = _prompt(file, CLIP_NAMES[0])
    logits, kv = file.prompt(ids, embeds)
    past = kv[0].shape[2]
    decoder = StaticDecoder(lean.sessions[DECODE_STEP], lean.bundle.dims.num_layers, lean.bundle.dims.vocab)
    decoder.start(kv, past + 4)
    buffers = [b.__array_interface__["data"][0] for b in decoder.buffers]
    token = np.array([[int(np.argmax(logits[0]))]], np.int64)
    for _ in range(3):
        want_logits, kv = file.step(token, kv)
        got_logits = decoder.step(token).copy()
        np.testing.assert_allclose(got_logits, want_logits, atol=1e-5)
        token = np.array([[int(np.argmax(want_logits[0]))]], np.int64)
    # The same memory throughout; its filled part is the concatenating cache, the rest still zeros.
    assert [b.__array_interface__["data"][0] for b in decoder.buffers] == buffers
    for got, want in zip(decoder.cache(), kv, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(not b[:, :, past + 3 :].any() for b in decoder.buffers)
    decoder.step(token)
    with pytest.raises(BundleError, match="static cache full at"):
        decoder.step(token)


def test_step_by_hand_on_the_static_graph_equals_the_file(tiny_bundle):
    file = SpeechPipeline(tiny_bundle, kv_cache="concat", decode_batch=None)
    lean = SpeechPipeline(tiny_bundle, decode_batch=None)
    ids, embeds = _prompt(file, CLIP_NAMES[1])
    _, kv = file.prompt(ids, embeds)
    token = np.array([[5]], np.int64)
    (want, *want_kv), (got, *got_kv) = (p.step(token, kv) for p in (file, lean))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert [g.shape for g in got_kv[0]] == [w.shape for w in want_kv[0]]


def test_static_cache_at_batch_2_matches_each_row_alone(tiny_bundle):
    """The default stays batch-dynamic underneath: a batch of two distinct prompts in one static cache
    gives each row what that prompt gives alone."""
    pipe = SpeechPipeline(tiny_bundle, decode_batch=None)
    rows = [_prompt(pipe, clip) for clip in CLIP_NAMES]
    length = min(ids.shape[1] for ids, _ in rows)
    prompts = [pipe.prompt(ids[:, :length], embeds) for ids, embeds in rows]
    batched_kv = [np.concatenate(parts, axis=0) for parts in zip(*(kv for _, kv in prompts), strict=True)]
    tokens = np.array([[int(np.argmax(logits[0]))] for logits, _ in prompts], np.int64)
    decoder = StaticDecoder(pipe.sessions[DECODE_STEP], pipe.bundle.dims.num_layers, pipe.bundle.dims.vocab)
    decoder.start(batched_kv, length + 2)
    batched = decoder.step(tokens)
    for row, (_, kv) in enumerate(prompts):
        alone, _ = pipe.step(tokens[row : row + 1], kv)
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)


def test_batch_1_pipeline_refuses_a_batch_of_2_in_one_line(tiny_bundle):
    pipe = SpeechPipeline(tiny_bundle, graphs=(DECODE_STEP,))
    dims = pipe.bundle.dims
    kv = [np.zeros((2, dims.kv_heads, 3, dims.head_dim), np.float32)] * (2 * dims.num_layers)
    with pytest.raises(BundleError, match="fixed to a batch of 1 at load") as err:
        pipe.step(np.array([[1], [2]], np.int64), kv)
    assert "\n" not in str(err.value)


def test_batch_specialised_fixes_only_the_batch_dimension(decode_model):
    model = batch_specialised(decode_model, 1)
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_value == 1 and not dims[0].dim_param
        assert "batch" not in [d.dim_param for d in dims]
    assert any(d.dim_param == "past" for d in model.graph.input[3].type.tensor_type.shape.dim)


def test_unknown_kv_cache_is_a_one_line_error(tiny_bundle):
    with pytest.raises(BundleError, match="unknown KV cache 'paged'"):
        SpeechPipeline(tiny_bundle, kv_cache="paged")


def test_transcribe_cli_gives_the_same_text_with_either_cache(tiny_bundle):
    from click.testing import CliRunner

    from granite_onnx.cli import cli

    clip = str(CLIPS / CLIP_NAMES[0])
    texts = []
    for cache in ("static", "concat"):
        args = [
            "transcribe",
            "--bundle",
            str(tiny_bundle),
            "--max-new-tokens",
            "16",
            "--kv-cache",
            cache,
            clip,
        ]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        texts.append(result.output)
    assert texts[0] == texts[1] and texts[0].strip()


def test_fold_shapes_leaves_no_layer_shape_arithmetic_and_computes_the_same(tiny_bundle, tmp_path):
    """After the static cache and batch 1, each layer's reshape targets are constants (no Shape op left in
    a layer), transposes of length-1 axes are reshapes, and every output is the unfolded graph's, bit for
    bit."""
    import onnxruntime as ort

    from granite_onnx.runtime.lean import fold_shapes

    layers = SpeechPipeline(tiny_bundle, graphs=(DECODE_STEP,)).bundle.dims.num_layers
    model = batch_specialised(static_cache_graph(onnx.load(str(tiny_bundle / "decode_step.onnx")), layers))
    folded = fold_shapes(model)
    onnx.checker.check_model(folded)
    in_layers = [n for n in folded.graph.node if "/layers." in n.name]
    assert not [n.name for n in in_layers if n.op_type == "Shape"]
    # The one transpose left per layer is the key's, for the scores (onnxruntime fuses it into the MatMul).
    transposed = {n.input[0] for n in in_layers if n.op_type == "Transpose"}
    assert transposed == {present_name(i, "key") for i in range(layers)}
    assert len(folded.graph.node) < 0.6 * len(model.graph.node)
    dims = SpeechPipeline(tiny_bundle, graphs=(DECODE_STEP,)).bundle.dims
    rng = np.random.default_rng(0)
    capacity, position = 12, 7
    feeds = {
        "input_ids": np.array([[5]], np.int64),
        "attention_mask": (np.arange(capacity) <= position).astype(np.int64)[None],
        "position_ids": np.array([[position]], np.int64),
        CACHE_POSITION: np.array([position], np.int64),
    }
    for i in range(layers):
        for kind in ("key", "value"):
            shape = (1, dims.kv_heads, capacity, dims.head_dim)
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(shape).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, folded)
    ]
    want, got = (s.run(None, feeds) for s in run)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fold_shapes_keeps_each_constant_dtype_and_a_run_time_length():
    """x [1, n, 8]: a float made from a shape (Cast, Sqrt) stays a float, and a reshape target with the
    run-time n becomes (1, 0, 2, 4); the outputs equal the unfolded graph's for two lengths."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from granite_onnx.runtime.lean import fold_shapes

    def ints(name, values, scalar=False):
        return helper.make_tensor(name, TensorProto.INT64, [] if scalar else [len(values)], values)

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["width"], axis=0),
        helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["width_f"], ["root"]),
        helper.make_node("Div", ["x", "root"], ["scaled"]),
        helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["lead", "n1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["scaled", "target"], ["y"]),
    ]
    inits = [
        ints("two", [2], scalar=True),
        ints("one", [1], scalar=True),
        ints("axes", [0]),
        ints("lead", [1]),
        ints("tail", [2, 4]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 2, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    folded = fold_shapes(model)
    onnx.checker.check_model(folded)
    assert "Shape" not in {n.op_type for n in folded.graph.node}
    made = {
        i.name: onnx.numpy_helper.to_array(i) for i in folded.graph.initializer if i.name.startswith("lean/")
    }
    assert [list(v) for v in made.values() if v.dtype == np.int64] == [[1, 0, 2, 4]]
    assert [v.dtype for v in made.values() if v.dtype != np.int64] == [np.float32]  # the Cast's float
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, folded)
    ]
    for n in (3, 5):
        x = np.arange(n * 8, dtype=np.float32).reshape(1, n, 8)
        want, got = (session.run(None, {"x": x})[0] for session in run)
        np.testing.assert_array_equal(got, want)
