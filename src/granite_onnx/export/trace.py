"""Run ``torch.onnx.export`` (TorchScript, ``dynamo=False``) on one wrapper."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..specs import CTC, OPSET, GraphSpec, ModelDims, dummy_inputs
from .patches import dynamic_length_patches, grouped_attention
from .wrappers import build_wrapper


def _as_torch(feeds: dict[str, np.ndarray], spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(feeds[name]) for name in spec.input_names)


@contextlib.contextmanager
def _quiet_exporter():
    """The TorchScript exporter is deprecated and warns about every traced size; none of it is actionable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trace_graph(
    model: nn.Module, spec: GraphSpec, dims: ModelDims, raw_path: Path, length_patches: bool = True
) -> None:
    """Trace the wrapper for ``spec`` into ``raw_path`` (the exporter's own layout, finalised later).

    ``length_patches=False`` traces upstream's forwards as they are: the graph is then only right at
    the traced length. It exists so tests can prove the parity harness catches that bug.
    """
    wrapper = build_wrapper(spec.name, model, dims)
    args = _as_torch(dummy_inputs(spec, dims), spec)
    patches = dynamic_length_patches(model) if length_patches else contextlib.nullcontext(-1)
    # The reference (reference_outputs) keeps upstream's attention, so the export gate compares the grouped
    # attention traced here with transformers' own eager maths.
    with torch.no_grad(), patches as patched, grouped_attention(model), _quiet_exporter():
        if patched == 0:
            raise RuntimeError(
                "no Granite Speech encoder modules found to patch; unsupported transformers version?"
            )
        torch.onnx.export(
            wrapper,
            args,
            str(raw_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )


def reference_outputs(
    model: nn.Module, spec: GraphSpec, dims: ModelDims, feeds: dict[str, np.ndarray]
) -> list:
    """The wrapper's PyTorch outputs for ``feeds`` (same patches as the export; the CTC graph against
    upstream's own forwards, ``unfold`` and BatchNorm included, which run in eager mode)."""
    wrapper = build_wrapper(spec.name, model, dims)
    patches = contextlib.nullcontext() if spec.name == CTC else dynamic_length_patches(model)
    with torch.no_grad(), patches:
        out = wrapper(*_as_torch(feeds, spec))
    out = out if isinstance(out, tuple) else (out,)
    return [t.numpy() for t in out]
