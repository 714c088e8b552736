"""Exact versions of every tool an artefact depends on, recorded when the artefact is made."""

from __future__ import annotations

import platform
import resource
from importlib import metadata

from . import __version__

PACKAGES = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "numpy",
    "tokenizers",
    "huggingface-hub",
    "safetensors",
)


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (None when absent), plus python and this package."""
    found: dict[str, str | None] = {"python": platform.python_version(), "granite-onnx": __version__}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def peak_rss_mib() -> float:
    """This process's peak resident set so far, in MiB (the kernel's ru_maxrss, KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
