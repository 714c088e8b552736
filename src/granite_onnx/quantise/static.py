"""``int8s``: statically calibrated INT8 in QDQ format.

``quantize_static`` with per-channel symmetric int8 weights and activations whose ranges come from
real clips run through the FP32 pipeline (:mod:`.calibration`). Only weight MatMuls and Convs are
quantised (``MatMulConstBOnly``): attention's activation-by-activation products stay FP32. The
QuantizeLinear / DequantizeLinear pairs are ``ai.onnx`` ops at opset 20; onnxruntime fuses them
into integer kernels when the session starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from .calibration import FeedReader, Feeds

OP_TYPES = ("MatMul", "Conv")
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}


def activation_matmuls(src: Path) -> list[str]:
    """MatMuls whose right-hand side is not a weight (attention's scores and context).

    The QDQ quantiser ignores ``MatMulConstBOnly``, so these are passed as excluded nodes.
    """
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return sorted(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights)


def quantise_file(src: Path, raw_out: Path, feeds: Sequence[Feeds], method: str, excluded: list[str]) -> dict:
    """Calibrate on ``feeds`` and write onnxruntime's QDQ output at ``raw_out``; returns settings used."""
    extra = {
        "MatMulConstBOnly": True,
        "ActivationSymmetric": False,
        "WeightSymmetric": True,
        "CalibStridedMinMax": 1,  # one sample per collection (see calibration.FeedReader)
    }
    settings = {
        "format": "QDQ",
        "op_types": list(OP_TYPES),
        "per_channel": True,
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "calibration": method,
        "calibration_samples": len(feeds),
        **extra,
    }
    activation_only = activation_matmuls(src)
    settings["kept_fp32_activation_matmuls"] = len(activation_only)
    quantize_static(
        str(src),
        str(raw_out),
        FeedReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=sorted(set(excluded) | set(activation_only)),
        use_external_data_format=True,
        calibrate_method=METHODS[method],
        extra_options=extra,
    )
    return settings
