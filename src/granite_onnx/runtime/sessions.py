"""onnxruntime sessions for a bundle's graphs (CPU; torch-free)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import BundleError

# onnxruntime fuses a weight-only graph (int8 weight -> DequantizeLinear -> MatMul, the int8w tier)
# into com.microsoft MatMulNBits at run time. Its accuracy level decides how it computes:
#   "4" (onnxruntime's default): int8 activations too. 4.1-2b decode_step on 2 cores: 152 ms/token.
#   "1": FP32 activations, as the graph says, weights kept int8: 4,107 ms/token (no fast 8-bit kernel
#        for it on this CPU; FP32 itself is 260 ms/token).
# The runtime keeps onnxruntime's default (what any consumer of the bundle gets); pass "1" to run the
# graph's literal semantics, as the weight-only formula test does.
WEIGHT_ONLY_ACCURACY = {"default": None, "int8": "4", "fp32": "1"}
OPT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    threads: int | None = None, opt_level: str = "all", prepack: bool = True, weight_only: str = "default"
) -> ort.SessionOptions:
    """Session options; ``prepack=False`` keeps MatMul weights memory-mapped from the sidecar instead of
    copying them (measured: no extra anonymous memory), which matters when a 9 GB PyTorch model is
    resident beside the session, as in the export gate. ``weight_only``: see WEIGHT_ONLY_ACCURACY."""
    options = ort.SessionOptions()
    level = WEIGHT_ONLY_ACCURACY[weight_only]
    if level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 4  # fatal only: failures surface as exceptions carrying the same message
    if threads:
        options.intra_op_num_threads = threads
    return options


def open_session(
    path: Path,
    threads: int | None = None,
    opt_level: str = "all",
    prepack: bool = True,
    weight_only: str = "default",
) -> ort.InferenceSession:
    """Open one graph; a missing or corrupt file becomes a one-line :class:`BundleError`."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} is missing: run `granite-onnx export` to create the bundle")
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=session_options(threads, opt_level, prepack, weight_only),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path} could not be loaded by onnxruntime ({reason}); re-run the export") from exc
