"""The tiers the quantise stage knows: a registry, one entry per tier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..specs import ENCODER, GRAPH_NAMES
from . import dynamic, fp16, static, weight_only
from .job import GraphJob


@dataclass(frozen=True)
class Tier:
    name: str
    method: str
    graphs: tuple[str, ...]  # graphs this tier writes; the others it runs in FP32
    needs_clips: bool  # calibration or range checks on real audio
    write_graph: Callable[[GraphJob], tuple[dict, dict]]  # -> (quantised node counts, details)


TIERS = {
    t.name: t
    for t in (
        Tier(
            "int8",
            "dynamic INT8: onnxruntime's dynamic quantiser, QInt8 per-channel weights, its default op types",
            GRAPH_NAMES,
            False,
            dynamic.write_graph,
        ),
        Tier(
            "int8w",
            "weight-only INT8: int8 weights + per-channel scales -> DequantizeLinear, FP32 activations",
            GRAPH_NAMES,
            False,
            weight_only.write_graph,
        ),
        Tier(
            "int8s",
            "static INT8 (QDQ): onnxruntime's static quantiser calibrated on real clips, per-channel",
            GRAPH_NAMES,
            True,
            static.write_graph,
        ),
        Tier(
            "fp16",
            "FP16 encoder with FP32 inputs/outputs; LLM graphs FP32",
            (ENCODER,),
            True,
            fp16.write_graph,
        ),
    )
}
