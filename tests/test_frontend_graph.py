"""frontend.onnx: the log-mel front-end as an ai.onnx graph, against the numpy recipe (runtime/features.py).

The gate is max abs error <= 1e-4 on every clip, noise with even and odd frame counts, a padded batch with
per-utterance floors and the 257-sample minimum; a too-short waveform is one clear error. Each trap the issue
names is shown to matter: a graph that makes that mistake fails the same gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from granite_onnx.audit import audit_file
from granite_onnx.errors import AudioError, BundleError
from granite_onnx.export.frontend import build_frontend
from granite_onnx.export.frontend_check import TOLERANCE, FrontendCheckError, check_frontend, synthetic_cases
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import FeatureConfig, audio_token_count, log_mel, log_mel_batch
from granite_onnx.runtime.frontend import OnnxFrontend, pad_batch
from granite_onnx.runtime.pipeline import SpeechPipeline
from granite_onnx.sidecar import write_with_sidecar
from granite_onnx.specs import IR_VERSION, OPSET, frontend_spec

CLIPS = Path(__file__).resolve().parents[1] / "clips"
CFG = FeatureConfig()


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, waves):
    waveform, num_samples = pad_batch(waves)
    return session.run(None, {"waveform": waveform, "num_samples": num_samples})


def test_the_bundle_has_frontend_onnx_passing_the_audit(tiny_bundle: Path):
    path = tiny_bundle / "frontend.onnx"
    assert audit_file(path).ok, audit_file(path).problems
    model = onnx.load(str(path), load_external_data=False)
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert {n.domain for n in model.graph.node} == {""}
    assert "STFT" in {n.op_type for n in model.graph.node}
    assert "MelWeightMatrix" not in {n.op_type for n in model.graph.node}
    spec = frontend_spec(2 * CFG.n_mels)
    assert [i.name for i in model.graph.input] == spec.input_names == ["waveform", "num_samples"]
    assert [o.name for o in model.graph.output] == spec.output_names
    assert (tiny_bundle / "frontend.onnx_data").is_file()


def test_the_export_report_holds_the_gate_per_clip(tiny_bundle: Path, clip_manifest):
    frontend = json.loads((tiny_bundle / "export_report.json").read_text())["frontend"]
    names = [c["name"] for c in frontend["cases"]]
    assert [c["file"] for c in clip_manifest] == names[: len(clip_manifest)]
    assert {"noise, even mel frames", "noise, odd mel frames", "padded batch, loud + quiet"} <= set(names)
    assert "minimum (257 samples)" in names
    assert frontend["tolerance"] == TOLERANCE
    assert all(c["max_abs_error"] <= TOLERANCE for c in frontend["cases"])
    assert frontend["worst"] == max(c["max_abs_error"] for c in frontend["cases"])


@pytest.mark.parametrize("name", sorted(p.name for p in CLIPS.glob("*.flac")))
def test_every_clip_matches_numpy_within_the_gate(tiny_bundle: Path, name: str):
    audio = load_audio(CLIPS / name)
    features, counts = OnnxFrontend(tiny_bundle / "frontend.onnx", CFG)([audio])
    want = log_mel(audio, CFG)
    assert features.shape == (1, *want.shape)
    assert float(np.max(np.abs(features[0] - want))) <= TOLERANCE
    assert counts.tolist() == [audio_token_count(len(audio), CFG)]


def test_float32_inside_also_passes_the_gate_but_with_less_margin():
    """The issue's fact: a float32 graph reaches ~5e-5. The bundle computes in float64 (measured 0 here)."""
    audio = load_audio(CLIPS / "jfk.flac")
    want = log_mel(audio, CFG)
    errors = {}
    for compute in ("float32", "float64"):
        got, _ = _run(_session(build_frontend(CFG, compute)), [audio])
        errors[compute] = float(np.max(np.abs(got[0] - want)))
    assert errors["float32"] <= TOLERANCE
    assert errors["float64"] <= errors["float32"] / 10


@pytest.mark.parametrize("samples", [257, 258, 319, 320, 480, 15840, 16000, 16001, 16160])
def test_frame_counts_and_token_counts_at_odd_and_even_lengths(samples: int):
    rng = np.random.default_rng(samples)
    audio = (0.1 * rng.standard_normal(samples)).astype(np.float32)
    got, counts = _run(_session(build_frontend(CFG)), [audio])
    want = log_mel(audio, CFG)
    assert got.shape[1] == want.shape[0] == (samples // CFG.hop_length + 1) // 2
    assert float(np.max(np.abs(got[0] - want))) <= TOLERANCE
    assert int(counts[0]) == audio_token_count(samples, CFG)


def test_a_padded_batch_floors_each_utterance_at_its_own_maximum():
    waves = synthetic_cases(CFG)["padded batch, loud + quiet"]
    got, counts = _run(_session(build_frontend(CFG)), waves)
    want = log_mel_batch(waves, CFG)
    assert float(np.max(np.abs(got - want))) <= TOLERANCE
    assert counts.tolist() == [audio_token_count(len(w), CFG) for w in waves]
    # The case discriminates: flooring the whole batch at its overall maximum is far outside the gate.
    model = build_frontend(CFG)
    for node in model.graph.node:
        if node.op_type == "ReduceMax":
            node.input[1] = "all_axes"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 1, 2], np.int64), "all_axes"))
    wrong, _ = _run(_session(model), waves)
    assert float(np.max(np.abs(wrong - want))) > 100 * TOLERANCE


def test_without_reflect_padding_the_frames_are_wrong():
    """STFT-17 does not centre: a graph without the Pad has fewer frames (and other values)."""
    model = build_frontend(CFG)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    for node in model.graph.node:
        node.input[:] = [pad.input[0] if i == pad.output[0] else i for i in node.input]
    model.graph.node.remove(pad)
    audio = load_audio(CLIPS / "librispeech-61-70968-0000.flac")
    got, _ = _run(_session(model), [audio])
    assert got.shape[1] != log_mel(audio, CFG).shape[0]


def test_onnx_mel_weight_matrix_is_not_the_htk_bank():
    """ONNX's MelWeightMatrix snaps edges to FFT bins: as the bank, it moves features far past the gate."""
    bins = CFG.n_fft // 2 + 1
    node = helper.make_node(
        "MelWeightMatrix", ["n", "dft", "sr", "lo", "hi"], ["bank"], output_datatype=onnx.TensorProto.FLOAT
    )
    scalars = [("n", CFG.n_mels, np.int64), ("dft", CFG.n_fft, np.int64), ("sr", CFG.sampling_rate, np.int64)]
    scalars += [("lo", 0.0, np.float32), ("hi", CFG.sampling_rate / 2, np.float32)]
    graph = helper.make_graph(
        [node],
        "bank",
        [],
        [helper.make_tensor_value_info("bank", onnx.TensorProto.FLOAT, [bins, CFG.n_mels])],
        [onnx.numpy_helper.from_array(np.array(v, t), n) for n, v, t in scalars],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    made.ir_version = IR_VERSION
    bank = _session(made).run(None, {})[0]
    model = build_frontend(CFG)
    init = next(i for i in model.graph.initializer if i.name == "mel_bank")
    init.CopyFrom(onnx.numpy_helper.from_array(bank.astype(np.float64), "mel_bank"))
    audio = load_audio(CLIPS / "jfk.flac")
    got, _ = _run(_session(model), [audio])
    assert float(np.max(np.abs(got[0] - log_mel(audio, CFG)))) > 0.1


def test_too_short_input_is_one_clear_error(tiny_bundle: Path):
    frontend = OnnxFrontend(tiny_bundle / "frontend.onnx", CFG)
    with pytest.raises(AudioError, match=r"256 samples long; the feature extractor needs at least 257"):
        frontend([np.zeros(256, np.float32)])
    features, _ = frontend([np.full(257, 0.01, np.float32)])
    assert features.shape == (1, 1, 160)


def test_the_gate_fails_a_wrong_graph(tmp_path: Path):
    """check_frontend is not a formality: a graph whose scale is off by 1 % fails it, naming the input."""
    model = build_frontend(CFG)
    quarter = next(i for i in model.graph.initializer if i.name == "quarter")
    quarter.CopyFrom(onnx.numpy_helper.from_array(np.array(0.2525, np.float64), "quarter"))
    path = tmp_path / "frontend.onnx"
    write_with_sidecar(model, tmp_path, path)
    with pytest.raises(FrontendCheckError, match=r"features differ from the numpy front-end"):
        check_frontend(path, CFG, CLIPS)


def test_other_extractor_settings_build_their_own_graph():
    cfg = FeatureConfig(n_fft=400, win_length=400, hop_length=100, n_mels=64)
    audio = load_audio(CLIPS / "librispeech-61-70968-0000.flac")
    got, counts = _run(_session(build_frontend(cfg)), [audio])
    want = log_mel(audio, cfg)
    assert got.shape == (1, *want.shape) and want.shape[1] == 128
    assert float(np.max(np.abs(got[0] - want))) <= TOLERANCE
    assert int(counts[0]) == audio_token_count(len(audio), cfg)


@pytest.mark.parametrize("name", sorted(p.name for p in CLIPS.glob("*.flac")))
def test_transcribe_with_the_onnx_frontend_equals_numpy(quantised_bundle: Path, name: str):
    audio = load_audio(CLIPS / name)
    for tier in (None, "int8"):
        numpy_side = SpeechPipeline(quantised_bundle, tier=tier).transcribe_array(audio, 24)
        onnx_side = SpeechPipeline(quantised_bundle, tier=tier, frontend="onnx").transcribe_array(audio, 24)
        assert onnx_side.token_ids == numpy_side.token_ids
        assert onnx_side.text == numpy_side.text


def test_a_bundle_without_the_frontend_graph_says_so(tiny_bundle: Path, tmp_path: Path):
    import shutil

    bundle = tmp_path / "old"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "frontend.onnx").unlink()
    with pytest.raises(BundleError, match=r"frontend.onnx is missing: the bundle predates"):
        SpeechPipeline(bundle, frontend="onnx")
    SpeechPipeline(bundle)  # the numpy front-end needs no graph
