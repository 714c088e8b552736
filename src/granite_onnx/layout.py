"""Weight layouts of a bundle: one sidecar per graph (the default, as published), or ``shared``.

In the shared layout prompt_encode and decode_step of a tier point the weights they have in common (the
whole LLM) into one ``llm[_<tier>].shared.onnx_data`` (see :func:`granite_onnx.sidecar.share_weights`).
Used by export (FP32) and quantise (a tier). Torch-free.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .errors import GraniteOnnxError
from .runtime.bundle import graph_file
from .sidecar import share_weights
from .specs import DECODE_STEP, PROMPT_ENCODE

LAYOUTS = ("per-graph", "shared")
SHARED_STEM = "llm"


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise GraniteOnnxError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def share_llm_weights(folder: Path, tier: str | None = None) -> dict:
    """The shared layout for one tier's prompt_encode and decode_step in ``folder`` (FP32 when ``tier`` is
    None); returns the :class:`~granite_onnx.sidecar.SharedLayout` as a dict."""
    stem = f"{SHARED_STEM}_{tier}" if tier else SHARED_STEM
    paths = [Path(folder) / graph_file(PROMPT_ENCODE, tier), Path(folder) / graph_file(DECODE_STEP, tier)]
    return asdict(share_weights(paths, stem))
