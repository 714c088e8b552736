"""``fp16``: a half-precision encoder whose inputs and outputs stay FP32.

onnxruntime's own converter (``onnxruntime.transformers.float16``) casts weights and activations to
float16 and inserts ``Cast`` nodes at the graph edges and around nodes kept in FP32. What is kept,
and why, is decided here and written to the tier report:

- by op type: LayerNormalization, Softmax and the reductions accumulate sums of squares or of
  exponentials internally, which overflow float16 (max 65504) long before their outputs do;
- by measurement: every node whose output reached more than ``max_abs / headroom`` on the real
  calibration clips (ranges from onnxruntime's MinMax calibrator on the FP32 graph), so louder or
  longer audio than the clips still has room before 65504.

The converter runs on the graph without its weights. On such a graph it only re-types each external
float weight it converts (it converts ``raw_data``, which an external tensor does not have), and the
writer then converts those weights' bytes one tensor at a time, with the converter's own clipping
(``convert_np_to_float16``). Loading every weight first, as the converter expects, held the FP32
encoder and its FP16 copy at once: 3.07 GiB peak for the 1.77 GiB full-size encoder, 1.73x.
The tests compare the streamed files with the converter run on the loaded model, tensor by tensor.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.transformers import float16
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from ..sidecar import write_with_sidecar
from .calibration import Feeds
from .job import GraphJob
from .static import calibrate

FP16_MAX = 65504.0
# Arithmetic worth counting as "converted" in the report (shape plumbing and constants are not).
COMPUTE_OPS = frozenset(
    {"MatMul", "Gemm", "Conv", "Einsum", "Add", "Sub", "Mul", "Div", "Gelu", "Sigmoid", "Tanh", "Erf", "Sqrt"}
)
KEEP_OP_TYPES = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "Pow",
)


def activation_ranges(src: Path, feeds: Sequence[Feeds], work: Path) -> dict[str, float]:
    """Largest |value| of every float tensor of the FP32 graph over ``feeds`` (MinMax calibration,
    weights memory-mapped: see :func:`.static.calibrate`)."""
    ranges = calibrate(src, feeds, "minmax", work, op_types=None)
    out = {}
    for name, value in ranges.data.items():
        low, high = value.range_value
        out[name] = float(max(abs(float(np.asarray(low).min())), abs(float(np.asarray(high).max()))))
    return out


def nodes_over(model: onnx.ModelProto, ranges: dict[str, float], limit: float) -> dict[str, float]:
    """Node name -> largest |output| for each node with an output over ``limit``."""
    found = {}
    for node in model.graph.node:
        peak = max((ranges.get(o, 0.0) for o in node.output), default=0.0)
        if peak > limit:
            found[node.name] = peak
    return found


def _value_info_from_dims(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    """The converter's value info for a converted weight, from its dims (its own reads the weight's
    bytes only to learn the shape, and cannot read a weight that is still FP32 on disk)."""
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def _clipping() -> tuple[float, float]:
    """The converter's defaults for the smallest positive and largest finite FP16 value."""
    params = inspect.signature(convert_float_to_float16).parameters
    return params["min_positive_val"].default, params["max_finite_val"].default


MIN_POSITIVE, MAX_FINITE = _clipping()  # read once, not per weight


def to_fp16_bytes(raw: bytes) -> bytes:
    """FP32 bytes -> FP16 bytes, clipped as the converter clips the weights it holds in memory."""
    values = np.frombuffer(raw, np.float32)
    return float16.convert_np_to_float16(values, MIN_POSITIVE, MAX_FINITE).astype(np.float16).tobytes()


def convert_weightless(
    model: onnx.ModelProto, block_nodes: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, Callable[[bytes], bytes]]]:
    """Run the converter on ``model`` (loaded without weights); return the FP16 graph and the byte
    converter for every external weight it re-typed to FP16."""
    was_float = {
        t.name
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and uses_external_data(t)
    }
    with mock.patch.object(float16, "make_value_info_from_tensor", _value_info_from_dims):
        model = convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(KEEP_OP_TYPES),
            node_block_list=sorted(block_nodes),
        )
    ONNXModel(model).topological_sort()  # the converter appends its Casts out of order
    retyped = {
        t.name: to_fp16_bytes
        for t in model.graph.initializer
        if t.name in was_float and t.data_type == onnx.TensorProto.FLOAT16
    }
    return model, retyped


def convert(src: Path, feeds: Sequence[Feeds], excluded: list[str], headroom: float, work: Path) -> tuple:
    """The FP16 graph (weights not loaded), the byte converter of each weight it made FP16, and a
    description of what stayed FP32 and why."""
    ranges = activation_ranges(Path(src).resolve(), feeds, Path(work).resolve())
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    limit = FP16_MAX / headroom
    hot = nodes_over(model, ranges, limit)
    present = {n.op_type for n in model.graph.node}
    model, transforms = convert_weightless(model, sorted(set(hot) | set(excluded)))
    details = {
        "fp16_max": FP16_MAX,
        "headroom": headroom,
        "kept_fp32_limit": limit,
        "largest_activation": max(ranges.values(), default=0.0),
        "kept_fp32_op_types": [t for t in KEEP_OP_TYPES if t in present],
        "kept_fp32_op_types_reason": "accumulate squares or exponentials internally; overflow fp16",
        "kept_fp32_by_range": {k: round(v, 3) for k, v in sorted(hot.items())},
    }
    return model, transforms, details


def write_graph(job: GraphJob) -> tuple[dict, dict]:
    """The tier's writer (see tiers.TIERS): converted node counts and what stayed FP32, and why."""
    model, transforms, details = convert(
        job.src, job.feeds, list(job.excluded), job.fp16_headroom, job.scratch
    )
    write_with_sidecar(model, Path(job.src).parent, job.dst, transforms)
    kept = set(details["kept_fp32_by_range"]) | set(job.excluded) | set(details["kept_fp32_op_types"])
    source = onnx.load(str(job.src), load_external_data=False).graph.node
    counts = Counter(n.op_type for n in source if n.op_type in COMPUTE_OPS and not kept & {n.name, n.op_type})
    return dict(sorted(counts.items())), details
