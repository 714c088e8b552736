"""``int8s``: statically calibrated INT8 in QDQ format.

onnxruntime's static quantiser with per-channel symmetric 7-bit weights (``reduce_range``: |w| <= 64, so
that no CPU's u8 x s8 kernel can saturate; see :mod:`.dynamic`) and uint8 activations whose ranges come
from real clips run through the FP32 pipeline (:mod:`.calibration`). Only weight MatMuls and Convs are
quantised: attention's activation-by-activation products stay FP32. The QuantizeLinear /
DequantizeLinear pairs are ``ai.onnx`` ops at opset 20; onnxruntime fuses them into integer kernels when
the session starts.

The calibrated ranges are rounded outwards to a coarse grid (:func:`round_ranges`) before the scales are
computed: the FP32 pass that measures them differs in its last bits from one CPU's kernels to another's,
and unrounded, those bits reach the stored scales, so the same command wrote different bytes on AVX2 and
AVX-512 machines.

:func:`quantise_streaming` does what :func:`quantise_file` (``quantize_static``) does, with each
weight read only when needed (:mod:`.lazy`): the calibration model is written beside a hard link to
the FP32 sidecar instead of a copy of every weight, its session keeps the weights memory-mapped, and
the quantised graph is streamed into one sidecar. The tests compare the two on the tiny model.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibraterBase, TensorData, TensorsData, create_calibrator
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

from ..sidecar import external_files
from .calibration import FeedReader, Feeds
from .job import GraphJob, quantised_nodes
from .lazy import run_quantiser, weights_read_on_demand

OP_TYPES = ("MatMul", "Conv")
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
EXTRA_OPTIONS = {
    "MatMulConstBOnly": True,
    "ActivationSymmetric": False,
    "WeightSymmetric": True,
    # One sample per collection: onnxruntime's histogram calibrators otherwise stack every sample's
    # activations into one array, which fails when clips differ in length and holds them all at once.
    "CalibStridedMinMax": 1,
}

# Calibrated range ends are rounded outwards to this many significant bits: a step of 1/16 to 1/32 of the
# value, against FP32 kernel noise of about 1e-6 of it, so a range moves to another grid point only when a
# measured end lies within that noise of a grid point (about 1 in 30,000 per range end). It widens a range by
# at most 1/16 (3 % on average), a fraction of one quantisation step in 256.
RANGE_BITS = 4


@dataclass(frozen=True)
class StaticRecipe:
    """The quantiser settings a static INT8 tier is made with."""

    weight_type: QuantType
    reduce_range: bool  # weights in [-64, 64] (int8) instead of [-127, 127]
    range_bits: int | None = RANGE_BITS  # None: ranges as measured (CPU-dependent last bits)
    activation_type: QuantType = QuantType.QUInt8  # QInt8: symmetric int8 activations (S8S8 kernels)

    def options(self) -> dict:
        """onnxruntime's extra options for this recipe."""
        return {**EXTRA_OPTIONS, "ActivationSymmetric": self.activation_type == QuantType.QInt8}


SEVEN_BIT = StaticRecipe(QuantType.QInt8, reduce_range=True)  # the int8s tier
FULL_RANGE = StaticRecipe(QuantType.QInt8, reduce_range=False, range_bits=None)  # int8s until 2026-12
# Measured candidates (bench/int8_candidates.py): uint8 weights, and symmetric int8 activations.
U8U8 = StaticRecipe(QuantType.QUInt8, reduce_range=False)
S8S8 = StaticRecipe(QuantType.QInt8, reduce_range=False, activation_type=QuantType.QInt8)


def round_outwards(value: np.ndarray, up: bool, bits: int = RANGE_BITS) -> np.ndarray:
    """``value`` moved away from zero (``up``: towards +inf, else towards -inf) to the nearest number with
    ``bits`` significant bits. Exact float64 arithmetic on a float32 input: the result is a float32 with a
    short mantissa, the same on every CPU."""
    out = []
    for v in np.asarray(value, dtype=np.float64).ravel():
        if v == 0 or not math.isfinite(v):
            out.append(v)
            continue
        step = 2.0 ** (math.floor(math.log2(abs(v))) - bits + 1)
        out.append((math.ceil(v / step) if up else math.floor(v / step)) * step)
    return np.asarray(out, dtype=np.float32).reshape(np.shape(value))


def round_ranges(ranges: TensorsData, bits: int = RANGE_BITS) -> TensorsData:
    """Every (lowest, highest) pair of ``ranges`` widened to the grid of :func:`round_outwards`."""
    rounded = {}
    for name, data in ranges.items():
        low, high = data.range_value
        rounded[name] = TensorData(
            lowest=round_outwards(low, up=False, bits=bits), highest=round_outwards(high, up=True, bits=bits)
        )
    return TensorsData(ranges.calibration_method, rounded)


def activation_matmuls(src: Path) -> list[str]:
    """MatMuls whose right-hand side is not a weight (attention's scores and context).

    The QDQ quantiser ignores ``MatMulConstBOnly``, so these are passed as excluded nodes.
    """
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return sorted(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights)


def settings(src: Path, samples: int, method: str, recipe: StaticRecipe = SEVEN_BIT) -> dict:
    return {
        "format": "QDQ",
        "op_types": list(OP_TYPES),
        "per_channel": True,
        "activation_type": recipe.activation_type.name,
        "weight_type": recipe.weight_type.name,
        "reduce_range": recipe.reduce_range,
        "range_significant_bits": recipe.range_bits,
        "calibration": method,
        "calibration_samples": samples,
        "kept_fp32_activation_matmuls": len(activation_matmuls(src)),
        **recipe.options(),
    }


def _excluded(src: Path, excluded: list[str]) -> list[str]:
    return sorted(set(excluded) | set(activation_matmuls(src)))


def quantise_file(
    src: Path,
    raw_out: Path,
    feeds: Sequence[Feeds],
    method: str,
    excluded: list[str],
    recipe: StaticRecipe = FULL_RANGE,
) -> dict:
    """``quantize_static`` as onnxruntime ships it (whole graph in memory), writing its own layout.

    It cannot round the ranges, so it matches :func:`quantise_streaming` only for a recipe without
    ``range_bits``."""
    quantize_static(
        str(src),
        str(raw_out),
        FeedReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        reduce_range=recipe.reduce_range,
        activation_type=recipe.activation_type,
        weight_type=recipe.weight_type,
        nodes_to_exclude=_excluded(src, excluded),
        use_external_data_format=True,
        calibrate_method=METHODS[method],
        extra_options=recipe.options(),
    )
    return settings(src, len(feeds), method, recipe)


def _session_with_mapped_weights(self) -> None:
    """The calibrator's session, as onnxruntime makes it, but without per-session weight copies and
    in priority order: the calibrator appends a ReduceMin/ReduceMax pair for every tensor at the end of
    the graph, and in the default order every activation then stays alive until they run (measured on
    the full-size encoder and a 52 s clip: 17.1 GiB of anonymous memory; priority order: 0.4 GiB)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.add_session_config_entry("session.disable_prepacking", "1")
    self.infer_session = ort.InferenceSession(
        self.augmented_model_path, sess_options=options, providers=self.execution_providers
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links refused: a copy costs disk, not memory
        shutil.copyfile(src, dst)


def calibrate(
    src: Path, feeds: Sequence[Feeds], method: str, work: Path, op_types: Sequence[str] | None = OP_TYPES
) -> TensorsData:
    """Activation ranges of ``src`` over ``feeds``, as ``quantize_static`` computes them (the inputs and
    outputs of ``op_types`` nodes; every float tensor when ``None``)."""
    work.mkdir(parents=True, exist_ok=True)
    graph = work / src.name
    linked = [graph, *(work / data.name for data in external_files(src))]
    _link_or_copy(src, graph)
    for data in external_files(src):  # own sidecar, and llm.shared.onnx_data in the shared layout
        _link_or_copy(data, work / data.name)
    try:
        with (
            weights_read_on_demand(work),
            mock.patch.object(CalibraterBase, "create_inference_session", _session_with_mapped_weights),
        ):
            calibrator = create_calibrator(
                graph,
                list(op_types) if op_types is not None else None,
                augmented_model_path=str(work / "augmented.onnx"),
                calibrate_method=METHODS[method],
                use_external_data_format=False,  # the augmented graph keeps pointing at the linked sidecar
                extra_options={},
            )
            reader = FeedReader(feeds)
            for start in range(len(feeds)):
                reader.set_range(start, start + 1)
                calibrator.collect_data(reader)
            ranges = calibrator.compute_data()
            del calibrator
    finally:  # onnx refuses to read a sidecar that has a second hard link: drop ours before quantising
        for path in (*linked, work / "augmented.onnx"):
            path.unlink(missing_ok=True)
    return ranges


def quantise_streaming(
    src: Path,
    dst: Path,
    feeds: Sequence[Feeds],
    method: str,
    excluded: list[str],
    work: Path,
    recipe: StaticRecipe = SEVEN_BIT,
) -> dict:
    """Calibrate on ``feeds`` and write the QDQ graph at ``dst`` + one sidecar (``work``: scratch space)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    ranges = calibrate(src, feeds, method, Path(work).resolve())
    if recipe.range_bits is not None:
        ranges = round_ranges(ranges, recipe.range_bits)
    args = (True, recipe.reduce_range, recipe.weight_type, recipe.activation_type, ranges, [])
    # per_channel, reduce_range, weight and activation types, tensors_range, nodes_to_quantize (all)
    run_quantiser(
        src,
        dst,
        lambda model: QDQQuantizer(model, *args, _excluded(src, excluded), list(OP_TYPES), recipe.options()),
        recipe.weight_type,
        recipe.activation_type,
    )
    return settings(src, len(feeds), method, recipe)


def writer(recipe: StaticRecipe):
    """A tier's writer (see tiers.TIERS) for ``recipe``: quantised node counts, settings, calibration."""

    def write_graph(job: GraphJob) -> tuple[dict, dict]:
        found = quantise_streaming(
            job.src, job.dst, job.feeds, job.calibration_method, list(job.excluded), job.scratch, recipe
        )
        return quantised_nodes(job.dst), {"settings": found, "calibration": job.calibration.summary()}

    return write_graph
