"""onnxruntime sessions for a bundle's graphs (CPU; torch-free)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import BundleError

WEIGHT_ONLY_ACCURACY_LEVEL = "1"  # fp32 compute for MatMulNBits (see session_options)
OPT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    threads: int | None = None, opt_level: str = "all", prepack: bool = True
) -> ort.SessionOptions:
    """Session options; ``prepack=False`` keeps MatMul weights memory-mapped from the sidecar instead of
    copying them (measured: no extra anonymous memory), which matters when a 9 GB PyTorch model is
    resident beside the session, as in the export gate."""
    options = ort.SessionOptions()
    # A weight-only graph (int8 weight -> DequantizeLinear -> MatMul) is fused by onnxruntime into
    # MatMulNBits, which by default (accuracy level 4) also quantises the activations to int8 at run
    # time: no longer weight-only, and measurably further from FP32. Level 1 keeps the weights int8 in
    # memory and computes in FP32, as the graph says. Other graphs are unaffected.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", WEIGHT_ONLY_ACCURACY_LEVEL)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 4  # fatal only: failures surface as exceptions carrying the same message
    if threads:
        options.intra_op_num_threads = threads
    return options


def open_session(
    path: Path, threads: int | None = None, opt_level: str = "all", prepack: bool = True
) -> ort.InferenceSession:
    """Open one graph; a missing or corrupt file becomes a one-line :class:`BundleError`."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} is missing: run `granite-onnx export` to create the bundle")
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(threads, opt_level, prepack),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path} could not be loaded by onnxruntime ({reason}); re-run the export") from exc
