"""Granite Speech 3.3-style LoRA: validated, merged into the LLM before tracing, proved against peft.

The tiny checkpoint ``--model tiny-lora`` is the tiny granite_speech with an adapter on q_proj and v_proj
(alpha / r = 0.5, as 3.3), its base saved before the adapter was attached and its lora_B redrawn. The PyTorch
reference is transformers + peft with the adapter active; the export merges ``W += alpha / r * B @ A`` itself
in float64. Parity against the reference therefore proves the merge, and it would fail against a reference
that lost the adapter: the adapter changes the transcript (asserted).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLIPS, family_checkpoint, run_whole_pipeline
from safetensors import safe_open

from granite_onnx.checkpoint import (
    load_export_model,
    load_reference_model,
    validate_checkpoint,
)
from granite_onnx.errors import CheckpointError
from granite_onnx.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, base_view, read_lora
from granite_onnx.parity.reference import greedy
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import audio_token_count, log_mel
from granite_onnx.runtime.pipeline import SpeechPipeline

CLIP_NAMES = ("jfk.flac", "librispeech-61-70968-0000.flac")
TOKENS = 24


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> tuple[Path, Path]:
    return family_checkpoint(tmp_path_factory, "tiny-lora")


@pytest.fixture(scope="module")
def lora_ckpt(lora) -> Path:
    return lora[0]


@pytest.fixture(scope="module")
def lora_bundle(lora) -> Path:
    return lora[1]


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    return folder


def _edit_adapter(folder: Path, **changes) -> None:
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_the_fixture_is_laid_out_as_3_3(lora_ckpt: Path):
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "model.safetensors"} <= {p.name for p in lora_ckpt.iterdir()}
    assert json.loads((lora_ckpt / "config.json").read_text())["has_lora_adapter"] is True
    with safe_open(str(lora_ckpt / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]  # noqa: SIM118 - the base was saved before the adapter
    with safe_open(str(lora_ckpt / ADAPTER_WEIGHTS), "pt") as f:
        b = [f.get_tensor(k) for k in f.keys() if "lora_B" in k]  # noqa: SIM118
    assert b and all(float(t.abs().max()) > 0.5 for t in b)  # redrawn: a zero lora_B would merge nothing
    spec = read_lora(lora_ckpt)
    assert (spec.rank, spec.alpha, spec.targets, spec.scale) == (4, 2.0, ("q_proj", "v_proj"), 0.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_rslora": True}, "use_rslora is set"),
        ({"use_dora": True}, "use_dora is set"),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern is set"),
        ({"alpha_pattern": {"q_proj": 8}}, "alpha_pattern is set"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save is set"),
        ({"bias": "all"}, "bias is 'all'"),
        ({"target_modules": ["q_proj", "to_q"]}, r"target_modules \['to_q'\] are outside the LLM"),
        ({"peft_type": "PREFIX_TUNING"}, "peft_type is 'PREFIX_TUNING'"),
        ({"r": 0}, "r must be a positive integer"),
        ({"lora_alpha": "32"}, "lora_alpha must be a positive number"),
    ],
)
def test_an_adapter_that_is_not_plain_lora_is_refused_in_one_line(lora_ckpt, tmp_path, changes, message):
    folder = _copy(lora_ckpt, tmp_path)
    _edit_adapter(folder, **changes)
    with pytest.raises(CheckpointError, match=message) as err:
        validate_checkpoint(folder)
    assert "\n" not in str(err.value) and ADAPTER_CONFIG in str(err.value)


def test_missing_adapter_files_are_one_line(lora_ckpt, tmp_path):
    folder = _copy(lora_ckpt, tmp_path)
    (folder / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors is missing"):
        validate_checkpoint(folder)
    (folder / ADAPTER_CONFIG).unlink()
    (folder / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="has adapter weights but no adapter_config.json"):
        validate_checkpoint(folder)


def test_the_reference_has_the_adapter_active(lora_ckpt):
    model = load_reference_model(lora_ckpt)
    assert model._hf_peft_config_loaded and model.active_adapters() == ["default"]


def test_a_reference_without_its_adapter_is_refused(lora_ckpt, monkeypatch):
    """transformers without peft loads the base silently: parity would pass against the wrong model."""
    import transformers.modeling_utils as modeling_utils

    monkeypatch.setattr(modeling_utils, "maybe_load_adapters", lambda path, *a, **kw: (None, path, {}))
    with pytest.raises(CheckpointError, match=r"did not attach the adapter \(is peft installed\?"):
        load_reference_model(lora_ckpt)


def _prompt_logits(model, ckpt: Path, clip: str) -> torch.Tensor:
    from granite_onnx.runtime.features import FeatureConfig
    from granite_onnx.runtime.prompt import PromptBuilder

    audio = load_audio(CLIPS / clip)
    cfg = FeatureConfig()
    ids = torch.tensor([PromptBuilder(ckpt).input_ids(audio_token_count(len(audio), cfg))])
    features = torch.from_numpy(log_mel(audio, cfg)[None])
    with torch.no_grad():
        return model(input_ids=ids, input_features=features, attention_mask=torch.ones_like(ids)).logits[
            0, -1
        ]


def test_the_merge_is_the_formula_and_equals_peft(lora_ckpt):
    merged, spec = load_export_model(lora_ckpt)
    assert spec is not None and not getattr(merged, "_hf_peft_config_loaded", False)
    with base_view(lora_ckpt) as base:
        plain = load_reference_model(Path(base))  # the base weights, no adapter files in the view
    name = "model.language_model.layers.0.self_attn.q_proj"
    with safe_open(str(lora_ckpt / ADAPTER_WEIGHTS), "pt") as f:
        a = f.get_tensor(f"base_model.model.{name}.lora_A.weight").double()
        b = f.get_tensor(f"base_model.model.{name}.lora_B.weight").double()
    w_base = dict(plain.named_modules())[name].weight.double()
    w_merged = dict(merged.named_modules())[name].weight
    assert torch.equal(w_merged, (w_base + 0.5 * (b @ a)).float())
    peft_model = load_reference_model(lora_ckpt)
    for clip in CLIP_NAMES:
        with_adapter = _prompt_logits(peft_model, lora_ckpt, clip)
        assert float((_prompt_logits(merged, lora_ckpt, clip) - with_adapter).abs().max()) < 1e-4
        assert float((_prompt_logits(plain, lora_ckpt, clip) - with_adapter).abs().max()) > 0.5


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_onnx_greedy_equals_generate_with_the_adapter_and_not_without(lora_bundle, lora_ckpt, name):
    reference = load_reference_model(lora_ckpt)
    pipeline = SpeechPipeline(lora_bundle)
    cfg = pipeline.bundle.features
    audio = load_audio(CLIPS / name)
    features = log_mel(audio, cfg)[None]
    ids = pipeline.prompt_ids(audio_token_count(len(audio), cfg))
    got = pipeline.generate(ids, pipeline.audio_embeds(features), TOKENS)
    want = greedy(reference, ids, features, TOKENS)
    assert got.token_ids == want.token_ids
    assert float(np.median(got.margins)) > 0.5
    with base_view(lora_ckpt) as base:
        without = greedy(load_reference_model(Path(base)), ids, features, TOKENS)
    assert without.token_ids != want.token_ids  # the adapter matters to the transcript


def test_the_whole_pipeline_says_merged_and_speech_only(lora_bundle, lora_ckpt, tmp_path):
    bundle = tmp_path / "tiny-lora"
    shutil.copytree(lora_bundle, bundle)
    meta = run_whole_pipeline(bundle, lora_ckpt)  # every tier gated here
    assert meta["source_model"]["lora_merged"] is True
    lora = meta["source_model"]["lora"]
    assert lora == {
        "merged": True,
        "rank": 4,
        "alpha": 2.0,
        "scale": 0.5,
        "targets": ["q_proj", "v_proj"],
        "speech_only": True,
    }
    card = (bundle / "README.md").read_text()
    assert "LoRA adapter" in card and "speech-only" in card
