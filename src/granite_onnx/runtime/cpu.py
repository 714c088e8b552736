"""The CPU a figure was measured on, and what onnxruntime's integer kernels do on it.

An INT8 figure holds for the kernels that produced it, and onnxruntime (MLAS) picks its u8 x s8 GEMM
kernel from the CPU's features:

- x86 with AVX-512 VNNI, AVX-VNNI or AMX: ``vpdpbusd`` / ``tdpbusd``, four byte products added in int32.
- x86 with AVX2 or AVX-512BW but no VNNI: ``vpmaddubsw``, which adds each *pair* of byte products in a
  saturating int16: 255 x 127 + 255 x 127 = 64,770 becomes 32,767.
- ARM64 (NEON, dot product, i8mm) and SSE-only x86: widened products added in int32.

So only the middle family can compute a different product, and only for weights large enough (a pair
with |w0| + |w1| > 128 against a uint8 activation). :func:`probe_saturation` asks onnxruntime itself
(one ``MatMulInteger`` node), which also tells the truth under an emulator such as ``qemu-x86_64 -cpu
Haswell``, where the flags in ``/proc/cpuinfo`` are the host's.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# The features that decide which integer kernel onnxruntime runs, as Linux's /proc/cpuinfo spells them.
X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve")
KERNEL_FEATURES = X86_FEATURES + ARM_FEATURES


@dataclass(frozen=True)
class CpuInfo:
    """What a parity, metadata or bench record says about the machine that measured it."""

    model: str
    machine: str  # platform.machine(): x86_64, aarch64, arm64, ...
    features: tuple[str, ...]  # those of KERNEL_FEATURES the CPU reports
    integer_kernel: str  # the u8 x s8 GEMM family onnxruntime picks here (see integer_kernel)
    saturating_u8s8: bool  # that kernel adds pairs of products in int16 with saturation (probed)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["features"] = list(self.features)
        return doc

    def describe(self) -> str:
        """One line for a table or a log: model, kernel family and the kernel-picking flags."""
        flags = " ".join(self.features) or "none of " + "/".join(KERNEL_FEATURES[:4])
        return f"{self.model} ({self.machine}; {flags}; integer kernel: {self.integer_kernel})"


def _cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    """Model name and feature flags from the text of /proc/cpuinfo (x86 'flags', ARM 'Features')."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def integer_kernel(machine: str, features: set[str] | tuple[str, ...]) -> str:
    """The u8 x s8 GEMM family onnxruntime's MLAS dispatches to on a CPU with ``features`` (by flag)."""
    f = set(features)
    if machine.lower() in ("x86_64", "amd64", "i386", "i686"):
        if "amx_int8" in f:
            return "amx"
        if "avx512_vnni" in f:
            return "avx512-vnni"
        if "avx_vnni" in f:
            return "avx-vnni"
        if "avx512bw" in f:
            return "avx512bw (pairs in int16)"
        if "avx2" in f:
            return "avx2 (pairs in int16)"
        return "sse (int32)"
    if machine.lower() in ("aarch64", "arm64"):
        if "i8mm" in f:
            return "arm64-i8mm"
        if "asimddp" in f:
            return "arm64-dotprod"
        return "arm64-neon"
    return f"{machine or 'unknown'} (not classified)"


def probe_matmul_integer(a: int = 255, b: int = 127, k: int = 64) -> int:
    """What this machine's onnxruntime returns for one ``MatMulInteger`` of a row of ``a`` (uint8) by a
    column of ``b`` (int8), ``k`` long: ``a * b * k`` where the kernel is exact."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "saturation_probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 1])],
        [numpy_helper.from_array(np.full((k, 1), b, np.int8), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1  # no worker threads for one tiny product
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return int(session.run(None, {"A": np.full((1, k), a, np.uint8)})[0][0, 0])


def probe_saturation() -> bool:
    """True when this machine's u8 x s8 kernel saturates pairs of products (the probe's sum is wrong)."""
    return probe_matmul_integer() != 255 * 127 * 64


@functools.lru_cache(maxsize=1)
def current_cpu() -> CpuInfo:
    """This machine's CPU, its kernel-picking features, and what its integer kernel actually does."""
    machine = platform.machine()
    model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        with contextlib.suppress(OSError):
            model, flags = _cpuinfo_fields(cpuinfo.read_text(errors="replace"))
    if not model and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if _sysctl("hw.optional.arm.FEAT_DotProd") == "1":
            flags.add("asimddp")
        if _sysctl("hw.optional.arm.FEAT_I8MM") == "1":
            flags.add("i8mm")
    model = model or platform.processor() or "unknown CPU"
    features = tuple(f for f in KERNEL_FEATURES if f in flags)
    saturating = probe_saturation()
    kernel = integer_kernel(machine, features)
    if saturating and "int16" not in kernel:  # an emulator, or flags that do not tell the whole story
        kernel = f"pairs in int16 (probed; flags say {kernel})"
    return CpuInfo(model, machine, features, kernel, saturating)
