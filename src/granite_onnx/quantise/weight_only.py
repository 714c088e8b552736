"""``int8w``: true weight-only INT8, written on the ``onnx`` API.

Each FP32 weight of a ``MatMul`` (its right-hand input) or of an embedding ``Gather`` (its data
input) becomes an int8 initializer with one float scale per output channel, feeding a standard
``DequantizeLinear``; activations stay FP32. onnxruntime has no option that does this at opset 20:
its MatMulNBits path emits ``com.microsoft`` ops or raises the opset to 21, and its 8-bit QDQ
weight-only mode quantises nothing. The formula (symmetric, zero point 0, round half to even as
``QuantizeLinear`` does)::

    scale[c] = max |W[..c..]| / 127      (1.0 where a channel is all zeros)
    q        = clip(rint(W / scale), -127, 127)        W ~= q * scale

An embedding table is not dequantised whole: its ``Gather`` reads the int8 rows and their scales, and only
those rows are scaled (``Cast`` and ``Mul``, what ``DequantizeLinear`` computes, bit for bit). onnxruntime
does not fold a ``DequantizeLinear`` of a constant, so a dequantised table costs its whole size on every
run: 31 ms of a 74 ms int4w decode step at the full 4.1-2b shape (100,353 x 2,048 rows, 2 cores).

Weights are read one at a time from the source sidecar; only the int8 copies are held in memory
until the single new sidecar is streamed out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..sidecar import write_with_sidecar
from .job import GraphJob

QMAX = 127
SUFFIX = "_int8w"


@dataclass(frozen=True)
class QuantisedWeight:
    name: str
    shape: tuple[int, ...]
    axis: int
    max_abs_error: float  # |W - q * scale|, at most scale / 2 by construction
    max_abs: float


def channel_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """One scale per index along ``axis``: the channel's largest magnitude over 127."""
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    peak = np.max(np.abs(weight), axis=reduce).astype(np.float32)
    return np.where(peak > 0, peak / QMAX, np.float32(1.0)).astype(np.float32)


def quantise_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and per-channel float32 scales of ``weight`` (symmetric, zero point 0)."""
    scale = channel_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantise(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    """What ``DequantizeLinear(q, scale, 0, axis)`` computes."""
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * scale.reshape(shape)


def int8_initializers(name: str, q: np.ndarray, scale: np.ndarray) -> list[onnx.TensorProto]:
    """The int8 values, scales and zero points that replace weight ``name`` (:func:`dequantize_node`)."""
    return [
        numpy_helper.from_array(q, name + SUFFIX),
        numpy_helper.from_array(scale, name + SUFFIX + "_scale"),
        numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + SUFFIX + "_zero_point"),
    ]


def dequantize_node(name: str, axis: int, tier: str = "int8w") -> onnx.NodeProto:
    """``DequantizeLinear`` of weight ``name``'s int8 initializers into ``<name>_dequantized``."""
    return helper.make_node(
        "DequantizeLinear",
        [name + SUFFIX, name + SUFFIX + "_scale", name + SUFFIX + "_zero_point"],
        [name + "_dequantized"],
        axis=axis,
        name=f"/{tier}/DequantizeLinear_{name}",
    )


LAST_AXIS = "int8_table_rows_last_axis"  # Unsqueeze's axes input for the gathered rows' scales


def int8_table_initializers(name: str, q: np.ndarray, scale: np.ndarray) -> list[onnx.TensorProto]:
    """An embedding table's int8 rows and per-row scales (no zero point: :func:`gather_rows` needs none)."""
    return int8_initializers(name, q, scale)[:2]


def gather_rows(node: onnx.NodeProto, tier: str) -> list[onnx.NodeProto]:
    """The nodes that replace ``node`` (``Gather(table, ids)``, axis 0) once ``table`` is int8: gather the
    int8 rows and their scales, then scale only those rows, into the same output."""
    table, ids = node.input[0], node.input[1]
    base = f"/{tier}/{node.name or table}"
    rows, scales = base + "/rows", base + "/scales"
    return [
        helper.make_node("Gather", [table + SUFFIX, ids], [rows], axis=0, name=base + "/GatherRows"),
        helper.make_node(
            "Gather", [table + SUFFIX + "_scale", ids], [scales], axis=0, name=base + "/GatherScales"
        ),
        helper.make_node("Cast", [rows], [rows + "_float"], to=onnx.TensorProto.FLOAT, name=base + "/Cast"),
        helper.make_node("Unsqueeze", [scales, LAST_AXIS], [scales + "_column"], name=base + "/Unsqueeze"),
        helper.make_node("Mul", [rows + "_float", scales + "_column"], list(node.output), name=base + "/Mul"),
    ]


def replace_table_gathers(
    graph: onnx.GraphProto,
    tables: set[str],
    tier: str,
    build: Callable[[onnx.NodeProto], list[onnx.NodeProto]] | None = None,
    constants: Sequence[onnx.TensorProto] | None = None,
) -> int:
    """Swap every ``Gather`` over one of ``tables`` for ``build(node)`` (default :func:`gather_rows`) in
    place, order kept, and add the ``constants`` those nodes read; returns how many. The caller has already
    put the tables' quantised initializers in the graph."""
    build = build or (lambda node: gather_rows(node, tier))
    rebuilt, count = [], 0
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in tables:
            rebuilt += build(node)
            count += 1
        else:
            rebuilt.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(rebuilt)
        if constants is None:
            constants = [numpy_helper.from_array(np.array([-1], np.int64), LAST_AXIS)]
        graph.initializer.extend(constants)
    return count


def _targets(model: onnx.ModelProto, excluded: set[str]) -> dict[str, int]:
    """Weight initializer -> channel axis, for every MatMul / Gather that reads a 2-D FP32 initializer.

    A weight also read by any other node (or an excluded one) is left in FP32 for all of them: one
    stored copy, never both.
    """
    inits = {i.name: i for i in model.graph.initializer}
    wanted: dict[str, int] = {}
    blocked: set[str] = set()
    for node in model.graph.node:
        slot = {"MatMul": 1, "Gather": 0}.get(node.op_type)
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            init = inits[name]
            ok = (
                i == slot
                and node.name not in excluded
                and init.data_type == onnx.TensorProto.FLOAT
                and len(init.dims) == 2
            )
            if node.op_type == "Gather":
                ok = ok and next((a.i for a in node.attribute if a.name == "axis"), 0) == 0
            axis = 1 if node.op_type == "MatMul" else 0  # output columns of W[K, N]; rows of a table
            if not ok or wanted.get(name, axis) != axis:
                blocked.add(name)
            else:
                wanted[name] = axis
    outputs = {o.name for o in model.graph.output}
    return {n: a for n, a in wanted.items() if n not in blocked and n not in outputs}


def quantise_model(
    model: onnx.ModelProto, base: Path, excluded: set[str]
) -> tuple[dict[str, int], list[QuantisedWeight]]:
    """Rewrite ``model`` (loaded without its weights; they live under ``base``) in place.

    Returns the quantised node count by op type and one record per weight.
    """
    targets = _targets(model, excluded)
    graph = model.graph
    keep, records, new_inits = [], [], []
    for init in graph.initializer:
        if init.name not in targets:
            keep.append(init)
            continue
        axis = targets[init.name]
        weight = numpy_helper.to_array(init, str(base))
        q, scale = quantise_weight(weight, axis)
        error = float(np.max(np.abs(weight - dequantise(q, scale, axis)))) if weight.size else 0.0
        records.append(
            QuantisedWeight(init.name, tuple(weight.shape), axis, error, float(np.max(np.abs(weight))))
        )
        new_inits += (int8_table_initializers if axis == 0 else int8_initializers)(init.name, q, scale)
        del weight
    tables = {name for name, axis in targets.items() if axis == 0}  # Gather tables (MatMul weights: axis 1)
    dq_nodes = [dequantize_node(name, axis) for name, axis in targets.items() if name not in tables]
    counts: Counter[str] = Counter()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in targets:
                if name not in tables:
                    node.input[i] = name + "_dequantized"
                counts[node.op_type] += 1
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    replace_table_gathers(graph, tables, "int8w")
    for node in reversed(dq_nodes):
        graph.node.insert(0, node)
    return dict(sorted(counts.items())), records


def matched_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes this tier would quantise with nothing excluded (for ``--exclude`` checks)."""
    targets = _targets(model, set())
    return {n.name for n in model.graph.node if any(i in targets for i in n.input)}


def write_graph(job: GraphJob) -> tuple[dict, dict]:
    """The tier's writer (see tiers.TIERS): quantised node counts and the worst rounding error."""
    model = onnx.load(str(job.src), load_external_data=False)
    counts, records = quantise_model(model, job.src.parent, set(job.excluded))
    write_with_sidecar(model, job.src.parent, job.dst)
    worst = max((r.max_abs_error / (r.max_abs or 1.0) for r in records), default=None)
    details = {
        "formula": "q = clip(rint(W / s), -127, 127), s = max|W| per output channel / 127",
        "weights": len(records),
        "worst_relative_rounding_error": None if worst is None else round(worst, 6),
    }
    return counts, details
