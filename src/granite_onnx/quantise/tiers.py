"""The tiers the quantise stage knows: a registry, one entry per tier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..specs import CTC, ENCODER, GRAPH_NAMES
from . import dynamic, fp16, int4, static, weight_only
from .job import GraphJob


@dataclass(frozen=True)
class Tier:
    name: str
    method: str
    graphs: tuple[str, ...]  # graphs this tier writes; the others it runs in FP32
    needs_clips: bool  # calibration or range checks on real audio
    write_graph: Callable[[GraphJob], tuple[dict, dict]]  # -> (quantised node counts, details)
    warning: str | None = None  # what a user of this tier must know; printed by quantise, on the card
    contracts: tuple[str, ...] = ("autoregressive", "ctc")  # registry contracts whose bundles it applies to


# The published 4.1-2b INT8 recipe, kept so that its bundle can be reproduced and compared; see dynamic.py.
PUBLISHED_WARNING = (
    "full-range int8 weights, as the published 4.1-2b INT8 bundle: on x86 CPUs without VNNI (AVX2, AVX-512 "
    "before Cascade Lake / Zen 4) onnxruntime's u8 x s8 kernel saturates pairs of products in int16 and the "
    "tier computes something else there; use int8 (7-bit weights, exact on every CPU)"
)


TIERS = {
    t.name: t
    for t in (
        Tier(
            "int8",
            "dynamic INT8: onnxruntime's dynamic quantiser, 7-bit (reduce_range) QInt8 per-channel weights, "
            "its default op types; exact integer products on every CPU",
            GRAPH_NAMES,
            False,
            dynamic.writer(dynamic.SEVEN_BIT),
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
            "static INT8 (QDQ): onnxruntime's static quantiser calibrated on real clips, 7-bit "
            "(reduce_range) per-channel weights, ranges rounded to 4 significant bits; exact integer "
            "products on every CPU",
            GRAPH_NAMES,
            True,
            static.writer(static.SEVEN_BIT),
        ),
        Tier(
            "fp16",
            "FP16 encoder with FP32 inputs/outputs; LLM graphs FP32",
            (ENCODER,),
            True,
            fp16.write_graph,
        ),
        Tier(
            "int4w",
            f"4-bit weight-only LLM, round to nearest: int4 in blocks of {int4.BLOCK_SIZE} input rows in "
            "plain ai.onnx (blocked DequantizeLinear -> MatMul, opset 21), lm_head and embedding rows int8; "
            "encoder int8w",
            GRAPH_NAMES,
            False,
            int4.writer("rtn"),
            contracts=("autoregressive",),
        ),
        Tier(
            "int4w-gptq",
            f"4-bit weight-only LLM, GPTQ on real clips (the Hessians of both LLM graphs pooled): int4 in "
            f"blocks of {int4.BLOCK_SIZE} in plain ai.onnx (opset 21), lm_head and embedding rows int8; "
            "encoder int8w. Its bytes depend on the CPU that calibrates (FP32 activations)",
            GRAPH_NAMES,
            True,
            int4.writer("gptq"),
            contracts=("autoregressive",),
        ),
        Tier(
            "int8-published",
            "dynamic INT8 as the published 4.1-2b bundle: full-range QInt8 per-channel weights",
            GRAPH_NAMES,
            False,
            dynamic.writer(dynamic.PUBLISHED),
            PUBLISHED_WARNING,
        ),
    )
}
DEFAULT_TIERS = ("int8", "int8w", "int8s", "fp16")  # what `--tier all` writes


def tier_graphs(tier: Tier, graph_names: tuple[str, ...]) -> tuple[str, ...]:
    """The graphs ``tier`` writes in a bundle whose model graphs are ``graph_names``: every one for a tier
    declared over all of them (GRAPH_NAMES), and for the encoder-only fp16 tier the audio encoder, which in a
    CTC bundle is the one graph (the conformer with its head)."""
    if tier.graphs == GRAPH_NAMES:
        return graph_names
    if graph_names == (CTC,) and tier.graphs == (ENCODER,):
        return (CTC,)
    return tuple(g for g in tier.graphs if g in graph_names)
