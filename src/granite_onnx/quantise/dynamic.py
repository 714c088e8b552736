"""``int8``: dynamic INT8 as in the published 4.1-2b bundle.

``onnxruntime.quantization.quantize_dynamic`` with QInt8 per-channel weights: MatMul becomes
DynamicQuantizeLinear + MatMulInteger, Conv becomes ConvInteger, all ``ai.onnx`` ops. Activations
are quantised at run time from each tensor's own range, so no calibration data is needed.
"""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

OP_TYPES = ("MatMul", "Conv")


def quantise_file(src: Path, raw_out: Path, excluded: list[str]) -> dict:
    """Write onnxruntime's output at ``raw_out`` (its own external-data layout); returns settings used."""
    settings = {
        "op_types": list(OP_TYPES),
        "per_channel": True,
        "weight_type": "QInt8",
        "reduce_range": False,
        "MatMulConstBOnly": True,
    }
    quantize_dynamic(
        str(src),
        str(raw_out),
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )
    return settings
