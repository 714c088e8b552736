"""``int8``: dynamic INT8, with weights narrow enough that no CPU's integer kernel can saturate.

onnxruntime's dynamic quantiser with per-channel weights and its default op types: MatMul becomes
DynamicQuantizeLinear + MatMulInteger, Conv becomes ConvInteger, the embedding table becomes uint8
(one scale) + DequantizeLinear after the Gather; all ``ai.onnx`` ops. Activations are quantised at run time
from each tensor's own range (uint8), so no calibration data is needed.

Why the weights are 7-bit (``reduce_range``): on x86 CPUs without VNNI (AVX2, and AVX-512 before Cascade
Lake / Zen 4), onnxruntime's u8 x s8 kernel adds each pair of byte products in a saturating int16
(``vpmaddubsw``). 255 x 127 x 2 = 64,770 does not fit, so the published 4.1-2b recipe (full-range int8
weights) computes a different, wrong product on those CPUs. With |w| <= 64 every pair stays within
255 x 64 x 2 = 32,640 and every kernel (AVX2, AVX-512, VNNI, AMX, ARM dot product) gives the exact integer
sum. :mod:`granite_onnx.runtime.saturation` proves that from the stored weights. The published recipe stays
as the ``int8-published`` tier, for reproducing that bundle.

:func:`quantise_streaming` runs the same quantiser as ``quantize_dynamic`` (``ONNXQuantizer``, same
settings) with each weight read only when it is quantised (:mod:`.lazy`), and streams the result into
one sidecar. On the tiny model its output is byte-identical to ``quantize_dynamic`` + re-save (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class DynamicRecipe:
    """The quantiser settings a dynamic INT8 tier is made with."""

    weight_type: QuantType
    reduce_range: bool  # weights in [-64, 64] (int8) or [0, 127] (uint8) instead of the full byte

    def settings(self) -> dict:
        return {
            "op_types": list(OP_TYPES),
            "per_channel": True,
            "weight_type": self.weight_type.name,
            "activation_type": "QUInt8 (dynamic)",
            "reduce_range": self.reduce_range,
            **EXTRA_OPTIONS,
        }


SEVEN_BIT = DynamicRecipe(QuantType.QInt8, reduce_range=True)  # the int8 tier: exact on every kernel
PUBLISHED = DynamicRecipe(
    QuantType.QInt8, reduce_range=False
)  # the 4.1-2b bundle's recipe: saturates on AVX2
U8U8 = DynamicRecipe(QuantType.QUInt8, reduce_range=False)  # a measured candidate (bench/int8_candidates.py)


def quantise_file(src: Path, raw_out: Path, excluded: list[str], recipe: DynamicRecipe = SEVEN_BIT) -> dict:
    """``quantize_dynamic`` as onnxruntime ships it (whole graph in memory), writing its own layout."""
    quantize_dynamic(
        str(src),
        str(raw_out),
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        reduce_range=recipe.reduce_range,
        weight_type=recipe.weight_type,
        nodes_to_exclude=excluded,
        use_external_data_format=True,
        extra_options=dict(EXTRA_OPTIONS),
    )
    return recipe.settings()


def quantise_streaming(src: Path, dst: Path, excluded: list[str], recipe: DynamicRecipe = SEVEN_BIT) -> dict:
    """Quantise ``src`` into ``dst`` + one sidecar, never holding more than one FP32 weight at a time."""
    args = (
        True,  # per_channel
        recipe.reduce_range,
        QuantizationMode.IntegerOps,
        False,  # static
        recipe.weight_type,
        QuantType.QUInt8,  # activations
        None,  # tensors_range
        [],  # nodes_to_quantize: all
    )
    run_quantiser(
        src,
        dst,
        lambda model: ONNXQuantizer(model, *args, list(excluded), list(OP_TYPES), dict(EXTRA_OPTIONS)),
        recipe.weight_type,
    )
    return recipe.settings()


def writer(recipe: DynamicRecipe):
    """A tier's writer (see tiers.TIERS) for ``recipe``: quantised node counts and settings."""

    def write_graph(job: GraphJob) -> tuple[dict, dict]:
        settings = quantise_streaming(job.src, job.dst, list(job.excluded), recipe)
        return quantised_nodes(job.dst), {"settings": settings}

    return write_graph
