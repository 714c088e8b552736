"""The 5.0 CTC front-end as an ONNX graph (``frontend.onnx`` of a CTC bundle): log-mel + deltas, stacked.

The same DSP as the autoregressive ``frontend.onnx`` (:mod:`.frontend`: reflect ``Pad``, ``STFT``, power,
the HTK bank as a constant, log10, a per-utterance floor), with ``GraniteSpeech5FeatureExtractor``'s framing
and its two extra steps, in ``ai.onnx`` opset 20 only:

1. framing from the batch's (padded) length ``L``: ``mel_frames = L // hop`` rounded up to an even
   ``num_frames``; the waveform is right-padded with zeros to ``(num_frames - 1) * hop + 1`` samples when
   shorter, and the centred STFT's frames are cut to ``num_frames``;
2. deltas ``sum_k k * (x[t+k] - x[t-k]) / (n (n+1) (2n+1) / 3)`` with the edge frames repeated (``Pad`` edge),
   appended on the mel axis, then frame pairs stacked (``4 * n_mels`` per row);
3. ``attention_mask`` [batch, rows]: row ``r`` of utterance ``b`` is valid when ``r < ceil((num_samples[b] //
   hop) / 2)``, as the extractor's mask.

It computes in float64 between float32 input and output, as :mod:`.frontend` does, and is gated at export
against :func:`granite_onnx.runtime.ctc_features.ctc_features_batch`. Torch-free.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.ctc_features import CtcFeatureConfig
from ..runtime.features import min_audio_samples
from ..specs import frontend_spec
from .frontend import COMPUTE_DTYPES, _const, dsp_inits, finish_model, log_scale_nodes, power_mel_nodes


def _framing(hop: int) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``samples`` [batch, L] -> ``filled`` (right-padded to the samples the frames need), ``num_frames`` and
    ``pairs`` (1-D int64)."""
    inits = [
        _const("fr_hop", [hop], np.int64),
        _const("fr_one", [1], np.int64),
        _const("fr_two", [2], np.int64),
        _const("fr_zero", [0], np.int64),
        _const("fr_zeros3", [0, 0, 0], np.int64),
        _const("fr_time_axis", [1], np.int64),
    ]
    nodes = [
        helper.make_node("Shape", ["samples"], ["fr_shape"]),
        helper.make_node("Gather", ["fr_shape", "fr_time_axis"], ["fr_length"], axis=0),
        helper.make_node("Div", ["fr_length", "fr_hop"], ["fr_mel_frames"]),
        helper.make_node("Add", ["fr_mel_frames", "fr_one"], ["fr_mel_plus_one"]),
        helper.make_node("Div", ["fr_mel_plus_one", "fr_two"], ["pairs"]),
        helper.make_node("Mul", ["pairs", "fr_two"], ["num_frames"]),
        helper.make_node("Sub", ["num_frames", "fr_one"], ["fr_last_frame"]),
        helper.make_node("Mul", ["fr_last_frame", "fr_hop"], ["fr_last_start"]),
        helper.make_node("Add", ["fr_last_start", "fr_one"], ["fr_needed"]),
        helper.make_node("Sub", ["fr_needed", "fr_length"], ["fr_short"]),
        helper.make_node("Max", ["fr_short", "fr_zero"], ["fr_right"]),
        helper.make_node("Concat", ["fr_zeros3", "fr_right"], ["fr_pads"], axis=0),
        helper.make_node("Pad", ["samples", "fr_pads"], ["filled"], mode="constant"),
    ]
    return nodes, inits


def _deltas(win_length: int, real: np.dtype) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``scaled`` [batch, frames, n_mels] -> ``deltas``, as ``torchaudio.functional.compute_deltas``."""
    n = (win_length - 1) // 2
    inits = [
        _const("dl_pads", [0, n, 0, 0, n, 0], np.int64),
        _const("dl_time_axis", [1], np.int64),
        _const("dl_scale", 1.0 / (n * (n + 1) * (2 * n + 1) / 3), real),
    ]
    nodes = [
        helper.make_node("Pad", ["scaled", "dl_pads"], ["dl_edges"], mode="edge"),
        helper.make_node("Shape", ["scaled"], ["dl_shape"]),
        helper.make_node("Gather", ["dl_shape", "dl_time_axis"], ["dl_frames"], axis=0),
    ]
    terms = []
    for k in range(1, n + 1):
        inits += [_const(f"dl_ahead_{k}", [n + k], np.int64), _const(f"dl_behind_{k}", [n - k], np.int64)]
        inits.append(_const(f"dl_k_{k}", float(k), real))
        nodes += [
            helper.make_node("Add", [f"dl_ahead_{k}", "dl_frames"], [f"dl_ahead_end_{k}"]),
            helper.make_node("Add", [f"dl_behind_{k}", "dl_frames"], [f"dl_behind_end_{k}"]),
            helper.make_node(
                "Slice", ["dl_edges", f"dl_ahead_{k}", f"dl_ahead_end_{k}", "dl_time_axis"], [f"dl_next_{k}"]
            ),
            helper.make_node(
                "Slice",
                ["dl_edges", f"dl_behind_{k}", f"dl_behind_end_{k}", "dl_time_axis"],
                [f"dl_prev_{k}"],
            ),
            helper.make_node("Sub", [f"dl_next_{k}", f"dl_prev_{k}"], [f"dl_diff_{k}"]),
            helper.make_node("Mul", [f"dl_diff_{k}", f"dl_k_{k}"], [f"dl_term_{k}"]),
        ]
        terms.append(f"dl_term_{k}")
    nodes.append(helper.make_node("Sum", terms, ["dl_total"]))
    nodes.append(helper.make_node("Mul", ["dl_total", "dl_scale"], ["deltas"]))
    return nodes, inits


def _mask(hop: int) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``num_samples`` [batch] and ``pairs`` -> ``attention_mask`` [batch, pairs] int64."""
    inits = [
        _const("mk_hop", hop, np.int64),
        _const("mk_one", 1, np.int64),
        _const("mk_two", 2, np.int64),
        _const("mk_zero", 0, np.int64),
        _const("mk_batch_axis", [0], np.int64),
        _const("mk_row_axis", [1], np.int64),
    ]
    nodes = [
        helper.make_node("Div", ["num_samples", "mk_hop"], ["mk_mel_frames"]),
        helper.make_node("Add", ["mk_mel_frames", "mk_one"], ["mk_plus_one"]),
        helper.make_node("Div", ["mk_plus_one", "mk_two"], ["mk_valid"]),
        helper.make_node("Squeeze", ["pairs", "mk_batch_axis"], ["mk_rows"]),
        helper.make_node("Range", ["mk_zero", "mk_rows", "mk_one"], ["mk_index"]),
        helper.make_node("Unsqueeze", ["mk_index", "mk_batch_axis"], ["mk_index_row"]),
        helper.make_node("Unsqueeze", ["mk_valid", "mk_row_axis"], ["mk_valid_col"]),
        helper.make_node("Less", ["mk_index_row", "mk_valid_col"], ["mk_keep"]),
        helper.make_node("Cast", ["mk_keep"], ["attention_mask"], to=TensorProto.INT64),
    ]
    return nodes, inits


def build_ctc_frontend(cfg: CtcFeatureConfig, compute: str = "float64") -> onnx.ModelProto:
    """The CTC front-end graph for ``cfg``, computing in ``compute`` (float32 in and out either way)."""
    if compute not in COMPUTE_DTYPES:
        raise ValueError(f"compute must be one of {COMPUTE_DTYPES}, got {compute!r}")
    real = np.dtype(compute)
    stft, mels = cfg.stft, cfg.stft.n_mels
    spec = frontend_spec(4 * mels, ctc=True)
    inits = [
        *dsp_inits(stft, real, float(cfg.logmel_floor_db)),
        _const("zero_1d", [0], np.int64),
        _const("frame_axis", [1], np.int64),
        _const("stacked_shape", [0, -1, 4 * mels], np.int64),
    ]
    framing, framing_inits = _framing(stft.hop_length)
    nodes = [
        helper.make_node("Cast", ["waveform"], ["samples"], to=helper.np_dtype_to_tensor_dtype(real)),
        *framing,
        *power_mel_nodes("filled", "mel_all"),  # [batch, 1 + L' // hop, n_mels], then cut to num_frames
        helper.make_node("Slice", ["mel_all", "zero_1d", "num_frames", "frame_axis"], ["mel"]),
        *log_scale_nodes("mel", "scaled"),
    ]
    delta_nodes, delta_inits = _deltas(cfg.delta_win_length, real)
    mask_nodes, mask_inits = _mask(stft.hop_length)
    nodes += [
        *delta_nodes,
        helper.make_node("Concat", ["scaled", "deltas"], ["with_deltas"], axis=2),
        helper.make_node("Reshape", ["with_deltas", "stacked_shape"], ["stacked"]),
        helper.make_node("Cast", ["stacked"], ["input_features"], to=TensorProto.FLOAT),
        *mask_nodes,
    ]
    doc = (
        f"Granite Speech 5.0 CTC front-end: {stft.sampling_rate} Hz waveform (at least "
        f"{min_audio_samples(stft)} samples), n_fft {stft.n_fft}, Hann {stft.win_length}, hop "
        f"{stft.hop_length}, {mels} HTK mels + deltas (window {cfg.delta_win_length}) -> stacked "
        f"[frames, {4 * mels}] features and their attention_mask; computed in {compute}"
    )
    return finish_model(nodes, inits + framing_inits + delta_inits + mask_inits, spec, doc)
