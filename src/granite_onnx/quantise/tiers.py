"""The tiers the quantise stage knows: a registry, one entry per tier."""

from __future__ import annotations

from dataclasses import dataclass

from ..specs import ENCODER, GRAPH_NAMES


@dataclass(frozen=True)
class Tier:
    name: str
    method: str
    graphs: tuple[str, ...]  # graphs this tier writes; the others it runs in FP32
    needs_clips: bool  # calibration or range checks on real audio


TIERS = {
    t.name: t
    for t in (
        Tier(
            "int8",
            "dynamic INT8: onnxruntime quantize_dynamic, QInt8 per-channel weights",
            GRAPH_NAMES,
            False,
        ),
        Tier(
            "int8w",
            "weight-only INT8: int8 weights + per-channel scales -> DequantizeLinear, FP32 activations",
            GRAPH_NAMES,
            False,
        ),
        Tier(
            "int8s",
            "static INT8 (QDQ): onnxruntime quantize_static calibrated on real clips, per-channel",
            GRAPH_NAMES,
            True,
        ),
        Tier("fp16", "FP16 encoder with FP32 inputs/outputs; LLM graphs FP32", (ENCODER,), True),
    )
}
