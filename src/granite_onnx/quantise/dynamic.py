"""``int8``: dynamic INT8 as in the published 4.1-2b bundle.

onnxruntime's dynamic quantiser with QInt8 per-channel weights and its default op types: MatMul becomes
DynamicQuantizeLinear + MatMulInteger, Conv becomes ConvInteger, the embedding table becomes uint8
(one scale) + DequantizeLinear after the Gather; all ``ai.onnx`` ops. Activations are quantised at run time
from each tensor's own range, so no calibration data is needed.

:func:`quantise_streaming` runs the same quantiser as ``quantize_dynamic`` (``ONNXQuantizer``, same
settings) with each weight read only when it is quantised (:mod:`.lazy`), and streams the result into
one sidecar. On the tiny model its output is byte-identical to ``quantize_dynamic`` + re-save (tested).
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.quant_utils import QuantizationMode
from onnxruntime.quantization.registry import IntegerOpsRegistry

from .job import GraphJob, quantised_nodes
from .lazy import run_quantiser

# quantize_dynamic's default: every op type its integer registry knows (here MatMul, Conv and the
# embedding Gather), as the published 4.1-2b INT8 bundle was made: its 4.0 GB is what this gives
# (MatMul/Conv alone leave the 0.8 GB embedding table of each LLM graph in FP32: 5.4 GB).
OP_TYPES = tuple(IntegerOpsRegistry)
EXTRA_OPTIONS = {"MatMulConstBOnly": True}
SETTINGS = {
    "op_types": list(OP_TYPES),
    "per_channel": True,
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic)",
    "reduce_range": False,
    **EXTRA_OPTIONS,
}


def quantise_file(src: Path, raw_out: Path, excluded: list[str]) -> dict:
    """``quantize_dynamic`` as onnxruntime ships it (whole graph in memory), writing its own layout."""
    quantize_dynamic(
        str(src),
        str(raw_out),
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=True,
        extra_options=dict(EXTRA_OPTIONS),
    )
    return dict(SETTINGS)


def quantise_streaming(src: Path, dst: Path, excluded: list[str]) -> dict:
    """Quantise ``src`` into ``dst`` + one sidecar, never holding more than one FP32 weight at a time."""
    args = (True, False, QuantizationMode.IntegerOps, False, QuantType.QInt8, QuantType.QUInt8, None, [])
    # per_channel, reduce_range, mode, static, weight and activation types, tensors_range, nodes_to_quantize
    run_quantiser(
        src,
        dst,
        lambda model: ONNXQuantizer(model, *args, list(excluded), list(OP_TYPES), dict(EXTRA_OPTIONS)),
        QuantType.QInt8,
    )
    return dict(SETTINGS)


def write_graph(job: GraphJob) -> tuple[dict, dict]:
    """The tier's writer (see tiers.TIERS): quantised node counts and settings."""
    settings = quantise_streaming(job.src, job.dst, list(job.excluded))
    return quantised_nodes(job.dst), {"settings": settings}
