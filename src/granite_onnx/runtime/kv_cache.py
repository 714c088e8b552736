"""A decode cache that does not grow: decode_step rewritten in memory to write into fixed buffers.

The exported decode_step appends each step's key and value with ``Concat(past, new)``: every step
copies the whole past into a new, larger present (at full size 160 KiB per position, so 2 x 168 MB at a
1024-token past, plus the fresh allocation), and the runtime hands that present back as the next past.

:func:`static_cache_graph` replaces each of those Concats with a ``ScatterND`` (ai.onnx since opset 11,
so the file's opset 20 stays) that writes the step's row at ``cache_position`` into a past of fixed
capacity. onnxruntime's ScatterND skips its input copy when its output is the same buffer as its
input, which :class:`StaticDecoder` arranges with IO binding: each layer's past input and present
output are bound to one preallocated buffer, so a step writes one row per layer and allocates nothing.
Attention then spans the whole capacity; the unwritten positions are masked by ``attention_mask``
(zeros there), which gives them exactly zero weight.

The rewrite happens at session load, on the bundle's own file: no second graph is shipped, every tier
gets it, and what a consumer of the file runs is unchanged. A consumer in another language makes the
same edit (a dozen nodes) or keeps the concatenating cache.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import BundleError
from ..specs import past_name, present_name

CACHE_POSITION = "cache_position"
CAPACITY = "capacity"
_PREFIX = "static_cache/"


def _concat_axis(node: onnx.NodeProto) -> int | None:
    for attr in node.attribute:
        if attr.name == "axis":
            return helper.get_attribute_value(attr)
    return None


def _rename_dim(value: onnx.ValueInfoProto, axis: int, name: str) -> None:
    dim = value.type.tensor_type.shape.dim[axis]
    dim.Clear()
    dim.dim_param = name


def static_cache_graph(model: onnx.ModelProto, num_layers: int) -> onnx.ModelProto:
    """decode_step with a fixed-capacity cache: a copy of ``model`` (the caller's is untouched).

    New input ``cache_position`` [1] (int64): the position this step writes. ``attention_mask`` and every
    past and present now span ``capacity`` positions; present i is past i with row ``cache_position``
    replaced. Raises :class:`BundleError` when a present is not ``Concat(past, new)`` along the sequence
    axis, the form the exporter writes (a graph edited by another tool may not have it).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {name: node for node in graph.node for name in node.output}
    concats = []
    for layer in range(num_layers):
        for kind in ("key", "value"):
            node = producer.get(present_name(layer, kind))
            past = past_name(layer, kind)
            if (
                node is None
                or node.op_type != "Concat"
                or node.input[0] != past
                or _concat_axis(node) not in (2, -2)
            ):
                raise BundleError(
                    f"{present_name(layer, kind)} is not Concat({past}, new) along the sequence axis in "
                    "this decode_step, so the static cache cannot be used with it: run with kv_cache='concat'"
                )
            concats.append(node)

    # indices [batch, kv_heads, 1, 3] = (row, head, cache_position), built once from layer 0's new key.
    new_key = concats[0].input[1]
    p = _PREFIX

    def const(name: str, values: list[int]) -> onnx.TensorProto:
        return helper.make_tensor(p + name, TensorProto.INT64, [len(values)], values)

    graph.initializer.extend(
        [
            const("zero", [0]),
            const("one", [1]),
            const("two", [2]),
            const("b_shape", [-1, 1, 1, 1]),
            const("h_shape", [1, -1, 1, 1]),
            const("p_shape", [1, 1, 1, 1]),
            helper.make_tensor(p + "start", TensorProto.INT64, [], [0]),
            helper.make_tensor(p + "delta", TensorProto.INT64, [], [1]),
        ]
    )
    nodes = [
        helper.make_node("Shape", [new_key], [p + "new_shape"], end=3),  # [batch, kv_heads, 1]
        helper.make_node("Concat", [p + "new_shape", p + "one"], [p + "index_shape"], axis=0),
        helper.make_node("Gather", [p + "new_shape", p + "zero"], [p + "batch"], axis=0),
        helper.make_node("Gather", [p + "new_shape", p + "one"], [p + "heads"], axis=0),
        helper.make_node("Squeeze", [p + "batch"], [p + "batch_s"]),
        helper.make_node("Squeeze", [p + "heads"], [p + "heads_s"]),
        helper.make_node("Range", [p + "start", p + "batch_s", p + "delta"], [p + "rows"]),
        helper.make_node("Range", [p + "start", p + "heads_s", p + "delta"], [p + "head_ids"]),
        helper.make_node("Reshape", [p + "rows", p + "b_shape"], [p + "rows4"]),
        helper.make_node("Reshape", [p + "head_ids", p + "h_shape"], [p + "heads4"]),
        helper.make_node("Reshape", [CACHE_POSITION, p + "p_shape"], [p + "pos4"]),
        helper.make_node("Expand", [p + "rows4", p + "index_shape"], [p + "rows_e"]),
        helper.make_node("Expand", [p + "heads4", p + "index_shape"], [p + "heads_e"]),
        helper.make_node("Expand", [p + "pos4", p + "index_shape"], [p + "pos_e"]),
        helper.make_node("Concat", [p + "rows_e", p + "heads_e", p + "pos_e"], [p + "indices"], axis=3),
    ]
    for node in concats:
        scatter = helper.make_node(
            "ScatterND",
            [node.input[0], p + "indices", node.input[1]],
            list(node.output),
            name=p + node.output[0],
        )
        node.CopyFrom(scatter)
    # The index nodes go first: they read only an input and layer 0's new key, which come earlier than
    # every scatter; place them right before the first scatter to keep the graph topologically sorted.
    first = min(i for i, n in enumerate(graph.node) if n.op_type == "ScatterND" and n.name.startswith(p))
    rebuilt = list(graph.node[:first]) + nodes + list(graph.node[first:])
    del graph.node[:]
    graph.node.extend(rebuilt)

    graph.input.append(helper.make_tensor_value_info(CACHE_POSITION, TensorProto.INT64, [1]))
    for value in graph.input:
        if value.name == "attention_mask":
            _rename_dim(value, 1, CAPACITY)
        elif value.name.startswith("past_key_values."):
            _rename_dim(value, 2, CAPACITY)
    for value in graph.output:
        if value.name.startswith("present."):
            _rename_dim(value, 2, CAPACITY)
    return out


class StaticDecoder:
    """decode_step over one utterance's fixed buffers, bound in place: a step allocates nothing.

    ``session`` must come from :func:`static_cache_graph`. :meth:`start` copies the prompt's cache into
    buffers of ``capacity`` positions; each :meth:`step` writes one row per layer and returns the logits
    (a view valid until the next step).
    """

    def __init__(self, session: ort.InferenceSession, num_layers: int, vocab: int):
        self.session = session
        self.num_layers = num_layers
        self.vocab = vocab
        self.length = 0
        self.capacity = 0

    def start(self, kv: list[np.ndarray], capacity: int) -> None:
        batch, heads, length, head_dim = kv[0].shape
        if capacity <= length:
            raise BundleError(
                f"static cache of {capacity} positions cannot hold a {length}-token prompt and a step"
            )
        self.length, self.capacity = length, capacity
        self.buffers = []
        for past in kv:
            buffer = np.zeros((batch, heads, capacity, head_dim), np.float32)
            buffer[:, :, :length] = past
            self.buffers.append(buffer)
        self.mask = np.zeros((batch, capacity), np.int64)
        self.mask[:, :length] = 1
        self.token = np.zeros((batch, 1), np.int64)
        self.position = np.zeros((batch, 1), np.int64)
        self.cache_position = np.zeros((1,), np.int64)
        self.logits = np.zeros((batch, self.vocab), np.float32)
        binding = self.session.io_binding()
        # OrtValues over the numpy arrays (no copy): writing the arrays updates what the next run reads.
        self._values = []
        for name, array in (
            ("input_ids", self.token),
            ("attention_mask", self.mask),
            ("position_ids", self.position),
            (CACHE_POSITION, self.cache_position),
        ):
            value = ort.OrtValue.ortvalue_from_numpy(array)
            self._values.append(value)
            binding.bind_ortvalue_input(name, value)
        logits = ort.OrtValue.ortvalue_from_numpy(self.logits)
        self._values.append(logits)
        binding.bind_ortvalue_output("logits", logits)
        names = [
            (past_name(i, k), present_name(i, k)) for i in range(self.num_layers) for k in ("key", "value")
        ]
        for (past, present), buffer in zip(names, self.buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)
            self._values.append(value)
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)  # the same buffer: ScatterND writes in place
        self.binding = binding

    def step(self, token: np.ndarray) -> np.ndarray:
        """One token per row ([batch, 1]) at the next position -> logits [batch, vocab]."""
        if self.length >= self.capacity:
            raise BundleError(f"static cache full at {self.capacity} positions")
        self.token[...] = token
        self.position[...] = self.length
        self.cache_position[0] = self.length
        self.mask[:, self.length] = 1
        self.session.run_with_iobinding(self.binding)
        self.length += 1
        return self.logits

    def cache(self) -> list[np.ndarray]:
        """The filled part of every buffer (copies), in spec order: what the concatenating cache holds."""
        return [buffer[:, :, : self.length].copy() for buffer in self.buffers]
