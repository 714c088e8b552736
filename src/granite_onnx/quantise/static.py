"""``int8s``: statically calibrated INT8 in QDQ format.

onnxruntime's static quantiser with per-channel symmetric int8 weights and uint8 activations whose
ranges come from real clips run through the FP32 pipeline (:mod:`.calibration`). Only weight MatMuls
and Convs are quantised: attention's activation-by-activation products stay FP32. The
QuantizeLinear / DequantizeLinear pairs are ``ai.onnx`` ops at opset 20; onnxruntime fuses them into
integer kernels when the session starts.

:func:`quantise_streaming` does what :func:`quantise_file` (``quantize_static``) does, with each
weight read only when needed (:mod:`.lazy`): the calibration model is written beside a hard link to
the FP32 sidecar instead of a copy of every weight, its session keeps the weights memory-mapped, and
the quantised graph is streamed into one sidecar. The tests compare the two on the tiny model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import CalibraterBase, TensorsData, create_calibrator
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


def activation_matmuls(src: Path) -> list[str]:
    """MatMuls whose right-hand side is not a weight (attention's scores and context).

    The QDQ quantiser ignores ``MatMulConstBOnly``, so these are passed as excluded nodes.
    """
    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return sorted(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in weights)


def settings(src: Path, samples: int, method: str) -> dict:
    return {
        "format": "QDQ",
        "op_types": list(OP_TYPES),
        "per_channel": True,
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "calibration": method,
        "calibration_samples": samples,
        "kept_fp32_activation_matmuls": len(activation_matmuls(src)),
        **EXTRA_OPTIONS,
    }


def _excluded(src: Path, excluded: list[str]) -> list[str]:
    return sorted(set(excluded) | set(activation_matmuls(src)))


def quantise_file(src: Path, raw_out: Path, feeds: Sequence[Feeds], method: str, excluded: list[str]) -> dict:
    """``quantize_static`` as onnxruntime ships it (whole graph in memory), writing its own layout."""
    quantize_static(
        str(src),
        str(raw_out),
        FeedReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=_excluded(src, excluded),
        use_external_data_format=True,
        calibrate_method=METHODS[method],
        extra_options=dict(EXTRA_OPTIONS),
    )
    return settings(src, len(feeds), method)


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
    src: Path, dst: Path, feeds: Sequence[Feeds], method: str, excluded: list[str], work: Path
) -> dict:
    """Calibrate on ``feeds`` and write the QDQ graph at ``dst`` + one sidecar (``work``: scratch space)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    ranges = calibrate(src, feeds, method, Path(work).resolve())
    args = (True, False, QuantType.QInt8, QuantType.QUInt8, ranges, [])
    # per_channel, reduce_range, weight and activation types, tensors_range, nodes_to_quantize (all)
    run_quantiser(
        src,
        dst,
        lambda model: QDQQuantizer(
            model, *args, _excluded(src, excluded), list(OP_TYPES), dict(EXTRA_OPTIONS)
        ),
        QuantType.QInt8,
        QuantType.QUInt8,
    )
    return settings(src, len(feeds), method)


def write_graph(job: GraphJob) -> tuple[dict, dict]:
    """The tier's writer (see tiers.TIERS): quantised node counts, settings and calibration clips."""
    settings = quantise_streaming(
        job.src, job.dst, job.feeds, job.calibration_method, list(job.excluded), job.scratch
    )
    return quantised_nodes(job.dst), {"settings": settings, "calibration": job.calibration.summary()}
