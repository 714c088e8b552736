"""onnxruntime sessions for a bundle's graphs (CPU; torch-free)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..audit import SHARED_SUFFIX
from ..errors import BundleError

# onnxruntime fuses a weight-only graph (int8 weight -> DequantizeLinear -> MatMul, the int8w tier)
# into com.microsoft MatMulNBits at run time. Its accuracy level decides how it computes:
#   "4" (onnxruntime's default): int8 activations too. 4.1-2b decode_step on 2 cores: 152 ms/token.
#   "1": FP32 activations, as the graph says, weights kept int8: 4,107 ms/token (no fast 8-bit kernel
#        for it on this CPU; FP32 itself is 260 ms/token).
# The runtime keeps onnxruntime's default (what any consumer of the bundle gets); pass "1" to run the
# graph's literal semantics, as the weight-only formula test does.
WEIGHT_ONLY_ACCURACY = {"default": None, "int8": "4", "fp32": "1"}
# Without pre-packing, onnxruntime's MLAS computes a one-row MatMul (a decode step) with a kernel that
# reads the weight in place, but only when the MatMul has no scale. Granite multiplies o_proj and
# down_proj outputs by residual_multiplier, and onnxruntime's MatMulScaleFusion folds that Mul into a
# FusedMatMul alpha, which sends those MatMuls (2 GB of the 7.35 GB LLM) down the general path that
# packs the weight on every call. Measured on the full 4.1-2b decode_step, 2 threads, the two sessions
# interleaved in one process: pre-packed 280 ms/token, not pre-packed 453, not pre-packed without the
# fusion 319. Sessions that do not pre-pack therefore skip that fusion; the Mul stays a cheap
# element-wise op on one row.
UNPACKED_DISABLED_OPTIMIZERS = ("MatMulScaleFusion",)
OPT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    threads: int | None = None,
    opt_level: str = "all",
    prepack: bool = True,
    weight_only: str = "default",
    profile_prefix: str | None = None,
) -> ort.SessionOptions:
    """Session options; ``prepack=False`` keeps MatMul weights memory-mapped from the sidecar instead of
    copying them (measured: no extra anonymous memory), which matters when a 9 GB PyTorch model is
    resident beside the session, as in the export gate; such a session also skips the fusions in
    UNPACKED_DISABLED_OPTIMIZERS. ``weight_only``: see WEIGHT_ONLY_ACCURACY. ``profile_prefix``: turn on
    onnxruntime's profiler, its JSON written under that prefix (``session.end_profiling()`` names it)."""
    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    level = WEIGHT_ONLY_ACCURACY[weight_only]
    if level is not None:
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", level)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.add_session_config_entry(
            "optimization.disable_specified_optimizers", ",".join(UNPACKED_DISABLED_OPTIMIZERS)
        )
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 4  # fatal only: failures surface as exceptions carrying the same message
    if threads:
        options.intra_op_num_threads = threads
    return options


Initializers = Sequence[tuple[str, ort.OrtValue]]


class SharedWeights:
    """The weights of a bundle's ``*.shared.onnx_data`` files (``export --layout shared``), held once for
    every session that reads them.

    Each shared file is memory-mapped once, read-only, and every weight in it becomes one OrtValue over
    that mapping, which :func:`open_session` hands to each session with ``add_initializer``. The sessions
    then compute on the same pages: the LLM is resident once for prompt_encode and decode_step, and the
    process's RSS counts it once (two sessions mapping the file themselves would each count it). Sessions
    that read shared weights run without pre-packing: onnxruntime would otherwise give each session its
    own packed copy of them. That costs some decode speed (about 1.15x per token at full size once
    MatMulScaleFusion is off; see UNPACKED_DISABLED_OPTIMIZERS and bench/scale.py).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._maps: dict[str, np.memmap] = {}
        self._values: dict[tuple[str, int, int], ort.OrtValue] = {}

    def initializers(self, path: Path) -> list[tuple[str, ort.OrtValue]]:
        """(name, OrtValue) for every initializer of the graph at ``path`` stored in a shared file."""
        model = onnx.load(str(path), load_external_data=False)
        found = []
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            if not info.location.endswith(SHARED_SUFFIX):
                continue
            key = (info.location, info.offset or 0, info.length or 0)
            if key not in self._values:
                if info.location not in self._maps:
                    self._maps[info.location] = np.memmap(self.folder / info.location, mode="r")
                dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
                array = np.ndarray(tuple(tensor.dims), dtype, buffer=self._maps[info.location], offset=key[1])
                self._values[key] = ort.OrtValue.ortvalue_from_numpy(array)
            found.append((tensor.name, self._values[key]))
        return found


def open_session(
    path: Path,
    threads: int | None = None,
    opt_level: str = "all",
    prepack: bool = True,
    weight_only: str = "default",
    initializers: Initializers = (),
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """Open one graph; a missing or corrupt file becomes a one-line :class:`BundleError`.

    ``initializers`` replace the graph's own copies of those weights (see :class:`SharedWeights`).
    ``rewrite`` edits the graph before onnxruntime sees it (the weights stay in the sidecar, read from
    the file's folder): how the runtime's static cache and batch-1 decode are made (:mod:`.kv_cache`).
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} is missing: run `granite-onnx export` to create the bundle")
    options = session_options(threads, opt_level, prepack, weight_only, profile_prefix)
    for name, value in initializers:
        options.add_initializer(name, value)
    model: str | bytes = str(path)
    if rewrite is not None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # a corrupt file: the same one-line error as onnxruntime's below
            raise BundleError(f"{path} could not be read ({type(exc).__name__}); re-run the export") from exc
        model = rewrite(proto).SerializeToString()
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(path.parent)
        )
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path} could not be loaded by onnxruntime ({reason}); re-run the export") from exc
