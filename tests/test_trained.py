"""The trained fixture (``--model trained``): it ships whole, it really transcribes, and its data is honest.

The claims of issue 7 are measured here, not copied: PyTorch's greedy character error rate on the shipped
held-out set and its median top-1/top-2 logit margin while decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from granite_onnx.checkpoint import TRAINED_DIR, resolve_checkpoint, validate_checkpoint

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "synthetic" / "heldout"
CALIBRATION = REPO / "synthetic" / "calibration"
MAX_CER = 0.10
MIN_MEDIAN_MARGIN = 2.0


def test_model_trained_resolves_to_the_shipped_checkpoint():
    source = resolve_checkpoint(None, "trained")
    assert source.path == TRAINED_DIR and source.is_fixture and source.model_id == "trained"
    config = validate_checkpoint(source.path)
    assert config["model_type"] == "granite_speech" and config["has_lora_adapter"] is False
    weights = sum(p.stat().st_size for p in TRAINED_DIR.glob("*.safetensors"))
    assert weights <= 21 * 2**20, f"{weights / 2**20:.1f} MiB: the shipped checkpoint must stay ~20 MB"


def test_the_synthetic_sets_carry_their_licence_and_are_held_out():
    from training.corpus import sentences
    from training.data import DataRecipe

    recipe = DataRecipe()
    train = set(sentences(recipe.train_sentences, recipe.train_seed))
    for folder in (HELDOUT, CALIBRATION):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (folder / "LICENSES.md").is_file()
        for clip in manifest["clips"]:
            assert (folder / clip["file"]).is_file() and "CC0" in clip["license"]
    heldout = [c["transcript"] for c in json.loads((HELDOUT / "manifest.json").read_text())["clips"]]
    calibration = [c["transcript"] for c in json.loads((CALIBRATION / "manifest.json").read_text())["clips"]]
    assert len(heldout) == recipe.heldout_sentences and not set(heldout) & train
    assert set(calibration) <= train  # int8s calibrates on training speech, never on what it is judged on


@pytest.fixture(scope="module")
def heldout_decoding():
    """PyTorch greedy decoding of every held-out clip: hypotheses and every step's top-1/top-2 margin."""
    import torch

    from granite_onnx.checkpoint import load_reference_model
    from granite_onnx.parity.clips import load_clips
    from granite_onnx.parity.metrics import top2_margins
    from granite_onnx.parity.reference import greedy
    from granite_onnx.runtime.audio import load_audio
    from granite_onnx.runtime.features import FeatureConfig, audio_token_count, log_mel
    from granite_onnx.runtime.prompt import PromptBuilder

    torch.set_num_threads(2)
    model = load_reference_model(TRAINED_DIR)
    cfg = FeatureConfig.from_file(TRAINED_DIR / "preprocessor_config.json")
    prompts = PromptBuilder(TRAINED_DIR)
    refs, hyps, margins = [], [], []
    for clip in load_clips(HELDOUT):
        audio = load_audio(clip.path, cfg.sampling_rate)
        ids = np.asarray([prompts.input_ids(audio_token_count(len(audio), cfg))], np.int64)
        out = greedy(model, ids, log_mel(audio, cfg)[None], 64)
        refs.append(clip.reference)
        hyps.append(prompts.decode(list(out.token_ids)))
        margins.extend(top2_margins(out.step_logits).tolist())
    return refs, hyps, margins


def test_the_recorded_heldout_figures_are_what_the_shipped_weights_give(heldout_decoding):
    """training_recipe.json's CER and margin were measured after FP16 rounding: they must be reproducible."""
    import jiwer

    refs, hyps, margins = heldout_decoding
    recorded = json.loads((TRAINED_DIR / "training_recipe.json").read_text())["heldout_pytorch"]
    assert jiwer.cer(refs, hyps) == pytest.approx(recorded["cer"], abs=0.01)
    assert float(np.median(margins)) == pytest.approx(recorded["median_margin"], abs=0.05)


def test_pytorch_transcribes_the_heldout_set(heldout_decoding):
    import jiwer

    refs, hyps, margins = heldout_decoding
    cer = jiwer.cer(refs, hyps)
    print(f"held-out PyTorch CER {cer:.2%}, WER {jiwer.wer(refs, hyps):.2%}, {len(refs)} clips")
    assert cer <= MAX_CER, list(zip(refs, hyps, strict=True))[:5]


def test_greedy_decoding_has_a_clear_margin(heldout_decoding):
    _, _, margins = heldout_decoding
    median = float(np.median(margins))
    print(f"median top-1/top-2 logit margin {median:.2f} over {len(margins)} steps")
    assert median >= MIN_MEDIAN_MARGIN
