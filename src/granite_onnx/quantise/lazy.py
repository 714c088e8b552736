"""Run onnxruntime's own quantisers on a graph loaded without its weights.

``quantize_dynamic`` and ``quantize_static`` load every weight of the graph before they start (their
shape-inference step saves the model and reads it back whole), then keep the quantised copies beside
the originals: about 21.5 GiB for a 7.35 GB LLM graph. Their quantiser classes, though, read each
weight through ``onnx.numpy_helper.to_array(tensor)``, which loads external data on demand, relative
to the working directory. So the stages here load the protobuf alone, replace the reload with shape
inference on that protobuf, and run the quantiser inside the graph's folder: each weight is read when
it is quantised and dropped after. The tests check the result byte for byte against the public
functions on the tiny model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import onnx
from onnxruntime.quantization import QuantType, base_quantizer, calibrate, onnx_quantizer
from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version

from ..sidecar import write_with_sidecar


def infer_without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the protobuf alone (initializer dims are in it; their bytes are not needed)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(inferred)
    return inferred


def load_without_weights(path: Path) -> onnx.ModelProto:
    return infer_without_weights(onnx.load(str(path), load_external_data=False))


@contextlib.contextmanager
def weights_read_on_demand(folder: Path) -> Iterator[None]:
    """Inside ``folder`` (where the sidecar lives), with onnxruntime's whole-model reloads replaced."""
    with (
        contextlib.chdir(folder),
        mock.patch.object(onnx_quantizer, "save_and_reload_model_with_shape_infer", infer_without_weights),
        mock.patch.object(base_quantizer, "save_and_reload_model_with_shape_infer", infer_without_weights),
        mock.patch.object(calibrate, "load_model_with_shape_infer", load_without_weights),
    ):
        yield


def run_quantiser(
    src: Path,
    dst: Path,
    build: Callable[[onnx.ModelProto], Any],
    weight_type: QuantType,
    activation_type: QuantType | None = None,
) -> None:
    """Build an onnxruntime quantiser on the weightless graph of ``src``, run it with weights read on
    demand, and stream its result into ``dst`` + one sidecar (what the public functions do, minus the
    whole-model load and the whole-model save)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    model = update_opset_version(load_without_weights(src), weight_type, activation_type)
    with weights_read_on_demand(src.parent):
        quantizer = build(model)
        quantizer.quantize_model()
    quantizer.model.topological_sort()  # as the public functions' save does
    write_with_sidecar(quantizer.model.model, src.parent, dst)
