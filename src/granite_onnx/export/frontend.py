"""The log-mel front-end as an ONNX graph (``frontend.onnx``), built from the feature-extractor settings.

Consumers outside Python (onnxruntime-node, the Rust ``ort`` crate, onnxruntime-web) otherwise each
re-implement the DSP, and that is where public ports break (a frame count of ``1 + (L - 1) // hop``
instead of ``L // hop + 1`` gave "tokens: 87, features 90"). The graph computes exactly the recipe of
:mod:`granite_onnx.runtime.features`, in ``ai.onnx`` opset 20 only:

1. ``Pad`` reflect by ``n_fft // 2`` (STFT-17 does not centre), ``STFT`` with the periodic Hann window
   zero-padded into ``n_fft`` (a constant), ``ReduceSumSquare`` over real/imaginary: the power;
2. ``MatMul`` by torchaudio's HTK bank, stored as a constant. ONNX's ``MelWeightMatrix`` is another
   bank (its edges snap to whole FFT bins and its top filter stops short of ``sr / 2``: features move by
   up to 1.12), so it is not used;
3. ``log10(max(mel, 1e-10))``, floored at each utterance's own maximum minus 8 (``ReduceMax`` over the
   time and mel axes only, never the batch), ``/ 4 + 1``;
4. an odd frame count drops its last frame, frame pairs are stacked into ``2 * n_mels`` features.

``audio_token_count`` is the projector's token count for each ``num_samples`` (integer arithmetic, the
formula of :func:`granite_onnx.runtime.features.audio_token_count`). The graph is float32 throughout
computes in float64 between its float32 input and output: float32 inside reaches 4.8e-5 of the
numpy recipe on the repo's clips (half the export gate of 1e-4; the error comes from low-energy FFT bins
beside loud ones), float64 inside 5e-6, at the same speed on onnxruntime's CPU kernels (measured in
``bench/frontend.py``). The measured distance of each clip is in the export report. Torch-free.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.features import FeatureConfig, _mel_filterbank, _window, min_audio_samples
from ..specs import FRONTEND, IR_VERSION, OPSET, TensorSpec, frontend_spec

LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0


def _const(name: str, value, dtype) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _value_info(t: TensorSpec) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        t.name, helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype)), list(t.shape)
    )


def _token_count_nodes(cfg: FeatureConfig) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """num_samples -> (num_samples // hop + 1) // 2 encoder frames -> ceil(frames / window) * (window //
    downsample) tokens, in int64 (every operand is non-negative, so Div's truncation is floor)."""
    window = cfg.projector_window_size
    inits = [
        _const("tok_hop", cfg.hop_length, np.int64),
        _const("tok_one", 1, np.int64),
        _const("tok_two", 2, np.int64),
        _const("tok_window_minus_one", window - 1, np.int64),
        _const("tok_window", window, np.int64),
        _const("tok_per_window", window // cfg.projector_downsample_rate, np.int64),
    ]
    nodes = [
        helper.make_node("Div", ["num_samples", "tok_hop"], ["tok_hops"]),
        helper.make_node("Add", ["tok_hops", "tok_one"], ["tok_mel_frames"]),
        helper.make_node("Div", ["tok_mel_frames", "tok_two"], ["tok_encoder_frames"]),
        helper.make_node("Add", ["tok_encoder_frames", "tok_window_minus_one"], ["tok_rounded_up"]),
        helper.make_node("Div", ["tok_rounded_up", "tok_window"], ["tok_blocks"]),
        helper.make_node("Mul", ["tok_blocks", "tok_per_window"], ["audio_token_count"]),
    ]
    return nodes, inits


COMPUTE_DTYPES = ("float64", "float32")


def build_frontend(cfg: FeatureConfig, compute: str = "float64") -> onnx.ModelProto:
    """The front-end graph for ``cfg``, computing in ``compute`` (float32 in and out either way).

    The window and the mel bank are constants of the graph (``writer`` moves them to the sidecar).
    """
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"compute must be one of {COMPUTE_DTYPES}, got {compute!r}")
    real = np.dtype(compute)
    spec = frontend_spec(2 * cfg.n_mels)
    inits = [
        *dsp_inits(cfg, real, DYNAMIC_RANGE),
        _const("frame_axis", [1], np.int64),
        _const("zero_1d", [0], np.int64),
        _const("two_1d", [2], np.int64),
        _const("stacked_shape", [0, -1, 2 * cfg.n_mels], np.int64),
    ]
    nodes = [
        helper.make_node("Cast", ["waveform"], ["samples"], to=helper.np_dtype_to_tensor_dtype(real)),
        *power_mel_nodes("samples", "mel"),
        *log_scale_nodes("mel", "scaled"),
        # 4. even frame count, pairs stacked
        helper.make_node("Shape", ["scaled"], ["scaled_shape"]),
        helper.make_node("Gather", ["scaled_shape", "frame_axis"], ["frames"], axis=0),
        helper.make_node("Div", ["frames", "two_1d"], ["pairs"]),
        helper.make_node("Mul", ["pairs", "two_1d"], ["even_frames"]),
        helper.make_node("Slice", ["scaled", "zero_1d", "even_frames", "frame_axis"], ["even"]),
        helper.make_node("Reshape", ["even", "stacked_shape"], ["stacked"]),
        helper.make_node("Cast", ["stacked"], ["input_features"], to=TensorProto.FLOAT),
    ]
    count_nodes, count_inits = _token_count_nodes(cfg)
    doc = (
        f"Granite Speech log-mel front-end: {cfg.sampling_rate} Hz waveform (at least "
        f"{min_audio_samples(cfg)} samples), n_fft {cfg.n_fft}, Hann {cfg.win_length}, "
        f"hop {cfg.hop_length}, "
        f"{cfg.n_mels} HTK mels -> stacked [frames, {2 * cfg.n_mels}] features; computed in {compute}"
    )
    return finish_model(nodes + count_nodes, inits + count_inits, spec, doc)


def dsp_inits(cfg: FeatureConfig, real: np.dtype, dynamic_range: float) -> list[TensorProto]:
    """The constants of :func:`power_mel_nodes` and :func:`log_scale_nodes` (the window and the bank from
    Python's math, the same bits on every CPU)."""
    pad = cfg.n_fft // 2
    return [
        _const("pads", [0, pad, 0, pad], np.int64),
        _const("frame_step", cfg.hop_length, np.int64),
        _const("window", _window(cfg), real),
        _const("mel_bank", _mel_filterbank(cfg), real),
        _const("last_axis", [-1], np.int64),
        _const("time_mel_axes", [1, 2], np.int64),
        _const("log_floor", LOG_FLOOR, real),
        _const("inv_ln10", 1.0 / np.log(10.0), real),
        _const("dynamic_range", dynamic_range, real),
        _const("quarter", 0.25, real),
        _const("one", 1.0, real),
    ]


def power_mel_nodes(samples: str, mel: str) -> list[onnx.NodeProto]:
    """``samples`` [batch, L] -> ``mel`` [batch, frames, n_mels]: the centred power spectrogram (reflect pad,
    STFT, |X|^2) times the HTK bank."""
    return [
        helper.make_node("Pad", [samples, "pads"], ["padded"], mode="reflect"),
        helper.make_node("Unsqueeze", ["padded", "last_axis"], ["signal"]),
        helper.make_node("STFT", ["signal", "frame_step", "window"], ["spectrum"], onesided=1),
        helper.make_node("ReduceSumSquare", ["spectrum", "last_axis"], ["power"], keepdims=0),
        helper.make_node("MatMul", ["power", "mel_bank"], [mel]),
    ]


def log_scale_nodes(mel: str, scaled: str) -> list[onnx.NodeProto]:
    """``log10(max(mel, 1e-10))``, floored at each utterance's maximum minus the dynamic range, / 4 + 1."""
    return [
        helper.make_node("Max", [mel, "log_floor"], ["mel_clamped"]),
        helper.make_node("Log", ["mel_clamped"], ["ln_mel"]),
        helper.make_node("Mul", ["ln_mel", "inv_ln10"], ["log_mel"]),
        helper.make_node("ReduceMax", ["log_mel", "time_mel_axes"], ["utterance_max"], keepdims=1),
        helper.make_node("Sub", ["utterance_max", "dynamic_range"], ["floor"]),
        helper.make_node("Max", ["log_mel", "floor"], ["floored"]),
        helper.make_node("Mul", ["floored", "quarter"], ["quartered"]),
        helper.make_node("Add", ["quartered", "one"], [scaled]),
    ]


def finish_model(nodes: list, inits: list, spec, doc: str) -> onnx.ModelProto:
    """The front-end graph as a checked opset-20, IR-10 model."""
    graph = helper.make_graph(
        nodes,
        FRONTEND,
        [_value_info(t) for t in spec.inputs],
        [_value_info(t) for t in spec.outputs],
        initializer=inits,
        doc_string=doc,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="granite-onnx"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
