"""The metadata stage: granite_export_metadata.json follows its schema and the files; the card follows it.

The bundle is the session's tiny export, copied (the fixture is read-only) and measured once by the
parity harness with a short token budget, so the parity blocks hold real numbers and transcripts.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest
from conftest import CLIPS

from granite_onnx.errors import BundleError
from granite_onnx.metadata import (
    CARD_FILE,
    METADATA_FILE,
    collect_metadata,
    load_schema,
    render_card,
    validate_metadata,
    write_metadata,
)
from granite_onnx.parity.report import REPORT_FILE as PARITY_FILE
from granite_onnx.specs import GRAPH_NAMES, ModelDims, graph_specs

TOP_LEVEL = {
    "schema_version",
    "contract",
    "runtime_support",
    "audio",
    "source_model",
    "toolchain",
    "graphs",
    "files",
    "token_ids",
    "prompt",
    "export",
    "quantisation",
    "parity",
}
HUB_ID = "ibm-granite/granite-speech-4.1-2b"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def metadata(measured_bundle) -> dict:
    return json.loads((measured_bundle / METADATA_FILE).read_text())


@pytest.fixture(scope="module")
def card(measured_bundle) -> str:
    return (measured_bundle / CARD_FILE).read_text(encoding="utf-8")


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A writable copy of the exported bundle, without a parity report."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


# --- schema ------------------------------------------------------------------------------------------


def test_metadata_validates_against_the_schema(metadata):
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(load_schema())
    Draft202012Validator(load_schema()).validate(metadata)  # the schema file itself, not only our wrapper
    validate_metadata(metadata)
    assert set(metadata) == TOP_LEVEL
    assert metadata["schema_version"] == 1


@pytest.mark.parametrize(
    "path",
    [
        ("toolchain", "onnxruntime"),
        ("toolchain", "exporter", "opset"),
        ("graphs", "encoder", "sha256"),
        ("graphs", "decode_step", "sidecar", "sha256"),
        ("graphs", "prompt_encode", "outputs", 0, "shape"),
        ("parity", "gates"),
        ("parity", "multi_clip_parity", 0, "tiers", 0, "text"),
        ("parity", "single_clip", 0, "encoder", "max_abs"),
        ("source_model", "config_sha256"),
        ("token_ids", "audio"),
        ("schema_version",),
        ("contract",),
    ],
    ids=lambda p: ".".join(map(str, p)),
)
def test_schema_rejects_a_missing_required_field(metadata, path):
    doc = copy.deepcopy(metadata)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(BundleError) as info:
        validate_metadata(doc)
    message = str(info.value)
    assert "\n" not in message
    assert ".".join(map(str, path)) in message


@pytest.mark.parametrize(
    "path, value",
    [
        (("graphs", "encoder", "bytes"), "113998"),
        (("graphs", "encoder", "sha256"), "not-a-digest"),
        (("toolchain", "exporter", "dynamo"), "false"),
        (("schema_version",), 2),
    ],
)
def test_schema_rejects_a_wrong_type(metadata, path, value):
    doc = copy.deepcopy(metadata)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    with pytest.raises(BundleError, match=re.escape(".".join(path))):
        validate_metadata(doc)


# --- facts read from the files -----------------------------------------------------------------------


def test_bytes_and_sha256_are_the_files(measured_bundle, metadata):
    graphs = metadata["graphs"]
    assert set(graphs) == {p.stem for p in measured_bundle.glob("*.onnx")}
    for entry in graphs.values():
        path = measured_bundle / entry["file"]
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == sha256(path)
        sidecar = measured_bundle / entry["sidecar"]["file"]
        assert entry["sidecar"]["file"] == f"{path.stem}.onnx_data"
        assert entry["sidecar"]["bytes"] == sidecar.stat().st_size
        assert entry["sidecar"]["sha256"] == sha256(sidecar)
    for name, facts in metadata["files"].items():
        assert facts == {
            "bytes": (measured_bundle / name).stat().st_size,
            "sha256": sha256(measured_bundle / name),
        }
    assert "tokenizer.json" in metadata["files"]


def test_source_config_sha256_is_the_checkpoints(metadata, tiny_ckpt):
    source = metadata["source_model"]
    assert source["config_sha256"] == sha256(tiny_ckpt / "config.json")
    assert source["id"] is None and source["folder"] == str(tiny_ckpt)
    assert source["revision"] is None and source["commit"] is None


def test_graph_io_ops_and_domains_follow_the_files_and_the_spec(measured_bundle, metadata):
    specs = graph_specs(ModelDims.from_file(measured_bundle / "config.json"))
    for name in GRAPH_NAMES:
        entry = metadata["graphs"][name]
        assert {"inputs": entry["inputs"], "outputs": entry["outputs"]} == specs[name].to_json()
        model = onnx.load(str(measured_bundle / f"{name}.onnx"), load_external_data=False)
        assert entry["op_types"] == dict(Counter(n.op_type for n in model.graph.node))
        assert entry["domains"] == ["ai.onnx"]
        assert entry["opset_imports"] == {"ai.onnx": 20} and entry["ir_version"] == 10
        assert (entry["graph"], entry["tier"]) == (name, "fp32")


def test_toolchain_tokens_and_prompt(measured_bundle, metadata):
    report = json.loads((measured_bundle / "export_report.json").read_text())
    toolchain = metadata["toolchain"]
    assert {k: v for k, v in toolchain.items() if k != "exporter"} == report["toolchain"]
    assert toolchain["exporter"]["dynamo"] is False and toolchain["exporter"]["opset"] == 20
    config = json.loads((measured_bundle / "config.json").read_text())
    generation = json.loads((measured_bundle / "generation_config.json").read_text())
    assert metadata["token_ids"] == {
        "audio": config["audio_token_index"],
        "bos": generation["bos_token_id"],
        "eos": generation["eos_token_id"],
        "pad": generation["pad_token_id"],
    }
    prompt = metadata["prompt"]
    assert prompt["text"].count(prompt["audio_placeholder"]) == 1
    assert prompt["instruction"] in prompt["text"]
    assert metadata["quantisation"] == {}


def test_parity_and_transcripts_are_copied_from_the_parity_report(measured_bundle, metadata):
    report = json.loads((measured_bundle / PARITY_FILE).read_text())
    assert metadata["parity"] == report
    texts = [
        (c["clip"], t["tier"], t["text"]) for c in metadata["parity"]["multi_clip_parity"] for t in c["tiers"]
    ]
    assert texts == [
        (c["clip"], t["tier"], t["text"]) for c in report["multi_clip_parity"] for t in c["tiers"]
    ]
    assert len(texts) == len(list(CLIPS.glob("*.flac")))
    assert [(c["clip"], c["pytorch_text"]) for c in metadata["parity"]["multi_clip_parity"]] == [
        (c["clip"], c["pytorch_text"]) for c in report["multi_clip_parity"]
    ]
    assert metadata["parity"]["gates"] == report["gates"]


def test_quantise_reports_are_included_by_tier(bundle_copy):
    from granite_onnx.quantise.stage import quantise_bundle

    quantise_bundle(bundle_copy, "int8w")
    summary = json.loads((bundle_copy / "quantise_int8w.json").read_text())
    doc = collect_metadata(bundle_copy)
    assert doc["quantisation"] == {"int8w": summary}
    validate_metadata(doc)
    card = render_card(doc)
    assert "## Quantisation" in card
    assert "| int8w | `decode_step_int8w.onnx` | Gather 1, MatMul 15 |" in card


def test_written_metadata_is_deterministic(measured_bundle, metadata):
    first = (measured_bundle / METADATA_FILE).read_bytes()
    write_metadata(measured_bundle)
    assert (measured_bundle / METADATA_FILE).read_bytes() == first
    assert json.loads(first) == collect_metadata(measured_bundle)


# --- the card ----------------------------------------------------------------------------------------


def front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_card_is_rendered_from_the_metadata(metadata, card):
    assert card == render_card(metadata)


def test_card_yaml_header(metadata, card):
    header = front_matter(card)
    assert header["license"] == "apache-2.0"
    assert header["pipeline_tag"] == "automatic-speech-recognition"
    assert header["library_name"] == "onnx"
    assert {"onnx", "speech", "granite", "asr"} <= set(header["tags"])
    assert "base_model" not in header  # the tests' checkpoint is a local folder, not a Hub model

    hub = copy.deepcopy(metadata)
    hub["source_model"].update(id=HUB_ID, is_fixture=False, revision="main")
    hub_card = render_card(hub)
    assert front_matter(hub_card)["base_model"] == HUB_ID
    assert f"--model {HUB_ID} --revision main" in hub_card


def parity_section(card: str) -> str:
    start = card.index("## Parity with PyTorch")
    return card[start : card.index("\n## ", start + 1)]


def numeric_cells(section: str) -> list[float]:
    """Every table cell of the section that is a number (``12``, ``2.15e-06``, ``3.5%``, ``0/16``)."""
    values = []
    for line in section.splitlines():
        if not line.startswith("| ") or set(line) <= set("|-"):
            continue
        for raw in line.strip("|").split(" | "):
            text = raw.strip()
            for part in text.split("/") if re.fullmatch(r"\d+/\d+", text) else [text]:
                scale = 100 if part.endswith("%") else 1
                with contextlib.suppress(ValueError):
                    values.append(float(part.rstrip("%")) / scale)
    return values


def numbers_in(value) -> list[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    items = value.values() if isinstance(value, dict) else value
    return [n for item in items for n in numbers_in(item)]


def test_every_number_in_the_parity_tables_is_in_the_metadata(metadata, card):
    known = numbers_in(metadata["parity"])
    shown = numeric_cells(parity_section(card))
    assert len(shown) >= 5 * 5  # the numeric block and five clips' rows were parsed, not skipped
    for value in shown:
        assert any(math.isclose(value, k, rel_tol=6e-3, abs_tol=1e-12) for k in known), value
    first = metadata["parity"]["single_clip"][0]
    assert f"{first['encoder']['max_abs']:.3g}" in card
    assert f"{first['decode']['mismatches']}/{first['decode']['steps']}" in card


def test_card_sections_and_transcripts(metadata, card):
    for heading in (
        "## Files",
        "## Graph contract",
        "## Parity with PyTorch",
        "## Toolchain",
        "## Reproduce",
    ):
        assert heading in card
    assert "## Licence" in card and "Apache" in card
    assert "granite-onnx export" in card and "granite-onnx metadata --bundle" in card and "make all" in card
    for graph in metadata["graphs"].values():
        assert graph["sha256"][:12] in card and str(graph["bytes"]) in card
    for clip in metadata["parity"]["multi_clip_parity"]:
        assert clip["clip"] in card
    assert not re.search(r"[\x00-\x08\x0b-\x1f]", card)  # control characters in transcripts are escaped


def test_card_without_parity_says_not_measured(bundle_copy):
    assert not (bundle_copy / PARITY_FILE).exists()
    write_metadata(bundle_copy)
    doc = json.loads((bundle_copy / METADATA_FILE).read_text())
    assert doc["parity"] is None
    card = (bundle_copy / CARD_FILE).read_text(encoding="utf-8")
    section = parity_section(card)
    assert "not measured" in section
    assert numeric_cells(section) == [] and "WER" not in section


def test_forced_publication_is_stated_on_the_card(metadata):
    forced = copy.deepcopy(metadata)
    forced["publication"] = {"forced": True, "failed_gates": ["fp32_byte_exact"]}
    assert "`fp32_byte_exact`" in render_card(forced) and "--force" in render_card(forced)
    assert "Warning" not in render_card(metadata)


def test_missing_export_report_is_a_one_line_bundle_error(bundle_copy):
    (bundle_copy / "export_report.json").unlink()
    with pytest.raises(BundleError) as info:
        write_metadata(bundle_copy)
    message = str(info.value)
    assert "\n" not in message and "export_report.json" in message and "granite-onnx export" in message
    assert not (bundle_copy / METADATA_FILE).exists() and not (bundle_copy / CARD_FILE).exists()


def test_missing_bundle_folder_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        collect_metadata(tmp_path / "nowhere")


# --- the card's first lines say what the checkpoint is (one test per kind) --------------------------------


def first_screen(card: str) -> str:
    """The title and the paragraphs before the first section: what a Hub visitor reads first."""
    body = card.split("\n---\n", 1)[1]
    return body[: body.index("\n## ")]


def with_source(metadata: dict, **source) -> dict:
    doc = copy.deepcopy(metadata)
    doc["source_model"].update(source)
    return doc


def test_the_card_of_a_local_folder_names_the_folder_and_says_it_is_local(metadata, card):
    screen = first_screen(card)
    name = Path(metadata["source_model"]["folder"]).name
    assert metadata["source_model"]["kind"] == "local"
    assert screen.splitlines()[1] == f"# {name} (ONNX)"
    assert "local Granite Speech checkpoint" in screen and "random" not in screen and "trained" not in screen


def test_the_card_of_a_hub_checkpoint_names_its_id_and_revision(metadata):
    screen = first_screen(
        render_card(
            with_source(metadata, id=HUB_ID, is_fixture=False, kind="hub", revision="main", commit="a" * 40)
        )
    )
    assert screen.splitlines()[1] == f"# {HUB_ID} (ONNX)"
    assert f"[`{HUB_ID}`](https://huggingface.co/{HUB_ID}) at revision `{'a' * 40}`" in screen
    unpinned = first_screen(render_card(with_source(metadata, id=HUB_ID, is_fixture=False, kind="hub")))
    assert "no revision was pinned" in unpinned


def test_the_card_of_the_random_fixture_says_its_transcripts_are_meaningless(metadata):
    screen = first_screen(
        render_card(with_source(metadata, id="tiny", is_fixture=True, kind="random-fixture"))
    )
    assert "tiny random Granite Speech" in screen.splitlines()[1]
    assert "random weights" in screen and "meaningless" in screen


def test_the_card_of_the_trained_fixture_gives_its_recipe_data_and_use(metadata):
    from granite_onnx.checkpoint import TRAINED_DIR
    from granite_onnx.metadata.collect import training_summary

    training = training_summary(TRAINED_DIR)
    recipe = json.loads((TRAINED_DIR / "training_recipe.json").read_text())
    doc = with_source(metadata, id="trained", is_fixture=True, kind="trained-fixture", training=training)
    screen = first_screen(render_card(doc))
    assert "trained Granite Speech fixture" in screen.splitlines()[1]
    assert "meaningless" not in screen and "random weights" not in screen
    assert (
        f"CER {recipe['heldout_pytorch']['cer']:.2%}" in screen and "CC0" in screen and "piper-tts" in screen
    )
    assert "Good for:" in screen and "Not good for:" in screen
    assert f"{recipe['data']['train_sentences']} English sentences" in screen


def test_the_first_paragraph_names_the_tiers_and_how_they_measured(metadata, card):
    screen = first_screen(card)
    tiers = sorted({g["tier"] for g in metadata["graphs"].values()})
    assert all(f"`{t}`" in screen for t in tiers)
    verdict = "PASS" if metadata["parity"]["passed"] else "FAIL"
    assert f"Verdict: **{verdict}**" in screen and "FP32 byte-exact" in screen


CARD_MAX_LINES, CARD_MAX_BYTES = 600, 64 * 1024  # whatever the number of clips (README: The bundle)


def test_a_card_with_many_clips_stays_short(metadata):
    """300 clips x every tier: the card shows five of them one by one and stays under the stated size; the
    metadata keeps all 300."""
    many = copy.deepcopy(metadata)
    clips = many["parity"]["multi_clip_parity"]
    many["parity"]["multi_clip_parity"] = [
        {**copy.deepcopy(c), "clip": f"{i:03d}-{c['clip']}"} for i in range(60) for c in clips
    ]
    card = render_card(many)
    assert len(many["parity"]["multi_clip_parity"]) == 300
    assert len(card.splitlines()) <= CARD_MAX_LINES and len(card.encode()) <= CARD_MAX_BYTES
    assert sum(f"{i:03d}-" in card for i in range(60)) <= 5
    assert "5 of the 300 clips are shown" in card and "parity.multi_clip_parity" in card


# --- the card through huggingface_hub: model-index and the consumer section ---------------------------


def test_the_card_parses_as_a_hub_model_card_with_the_measured_wer(metadata, card):
    from huggingface_hub import ModelCard

    parsed = ModelCard(card)
    assert parsed.data.license == "apache-2.0" and parsed.data.pipeline_tag == "automatic-speech-recognition"
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in parsed.data.eval_results}
    sets = metadata["parity"]["sets"]
    assert sets
    for name, facts in sets.items():
        dataset = f"{name} ({facts['clips']} clips)"
        for tier, t in facts["tiers"].items():
            assert results[(dataset, f"WER of {tier} vs PyTorch (%)")] == round(100 * t["wer_vs_pytorch"], 2)
            assert results[(dataset, f"WER of {tier} vs reference (%)")] == round(
                100 * t["wer_vs_reference"], 2
            )
        pytorch = results[(dataset, "WER of PyTorch vs reference (%)")]
        assert pytorch == round(100 * facts["pytorch_wer_vs_reference"], 2)
    assert all(
        r.metric_type == "wer" and r.task_type == "automatic-speech-recognition"
        for r in parsed.data.eval_results
    )


def test_a_card_without_parity_has_no_model_index(metadata):
    from huggingface_hub import ModelCard

    bare = copy.deepcopy(metadata)
    bare["parity"] = None
    parsed = ModelCard(render_card(bare))
    assert not parsed.data.eval_results
    assert "model-index" not in render_card(bare)


def test_the_card_says_how_to_run_it_from_node_and_rust(metadata, card):
    start = card.index("## Use it from Node.js or Rust")
    section = card[start : card.index("\n## ", start + 1)]
    prompt, audio = metadata["prompt"], metadata["audio"]
    assert f"`prompt.prefix_ids` ({len(prompt['prefix_ids'])} ids)" in section
    assert f"`prompt.suffix_ids` ({len(prompt['suffix_ids'])} ids)" in section
    assert f"({prompt['audio_token_id']}) repeated" in section
    assert f"divide PCM16 samples by {audio['pcm16_scale']}" in section and "at least 257 samples" in section
    assert "`waveform` float32 [batch, samples], `num_samples` int64 [batch]" in section
    assert "node examples/node/transcribe.mjs BUNDLE audio.wav" in section and "commit_from_file" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and "frontend.onnx" in line]
    assert {r.split("|")[1].strip() for r in rows} >= {"fp32"}
    cases = metadata["export"]["frontend"]["cases"]
    for case in cases:
        assert f"| {case['name']} | {case['frames']} |" in section
