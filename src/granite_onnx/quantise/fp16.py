"""``fp16``: a half-precision encoder whose inputs and outputs stay FP32.

onnxruntime's own converter (``onnxruntime.transformers.float16``) casts weights and activations to
float16 and inserts ``Cast`` nodes at the graph edges and around nodes kept in FP32. What is kept,
and why, is decided here and written to the tier report:

- by op type: LayerNormalization, Softmax and the reductions accumulate sums of squares or of
  exponentials internally, which overflow float16 (max 65504) long before their outputs do;
- by measurement: every node whose output reached more than ``max_abs / headroom`` on the real
  calibration clips (ranges from onnxruntime's MinMax calibrator on the FP32 graph), so louder or
  longer audio than the clips still has room before 65504.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_model
from onnxruntime.quantization.onnx_model import ONNXModel
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


def convert(src: Path, feeds: Sequence[Feeds], excluded: list[str], headroom: float, work: Path) -> tuple:
    """The FP16 model (weights in memory) and a description of what stayed FP32 and why."""
    ranges = activation_ranges(Path(src).resolve(), feeds, Path(work).resolve())
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    limit = FP16_MAX / headroom
    hot = nodes_over(model, ranges, limit)
    load_external_data_for_model(model, str(Path(src).parent))
    present = {n.op_type for n in model.graph.node}
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(KEEP_OP_TYPES),
        node_block_list=sorted(set(hot) | set(excluded)),
    )
    ONNXModel(converted).topological_sort()  # the converter appends its Casts out of order
    details = {
        "fp16_max": FP16_MAX,
        "headroom": headroom,
        "kept_fp32_limit": limit,
        "largest_activation": max(ranges.values(), default=0.0),
        "kept_fp32_op_types": [t for t in KEEP_OP_TYPES if t in present],
        "kept_fp32_op_types_reason": "accumulate squares or exponentials internally; overflow fp16",
        "kept_fp32_by_range": {k: round(v, 3) for k, v in sorted(hot.items())},
    }
    return converted, details


def write_graph(job: GraphJob) -> tuple[dict, dict]:
    """The tier's writer (see tiers.TIERS): converted node counts and what stayed FP32, and why."""
    model, details = convert(job.src, job.feeds, list(job.excluded), job.fp16_headroom, job.scratch)
    write_with_sidecar(model, job.scratch, job.dst)
    kept = set(details["kept_fp32_by_range"]) | set(job.excluded) | set(details["kept_fp32_op_types"])
    source = onnx.load(str(job.src), load_external_data=False).graph.node
    counts = Counter(n.op_type for n in source if n.op_type in COMPUTE_OPS and not kept & {n.name, n.op_type})
    return dict(sorted(counts.items())), details
