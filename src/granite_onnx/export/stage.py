"""The export stage: checkpoint folder -> FP32 bundle (three graphs, processor files, report).

Each graph is traced, finalised (IR 10, one sidecar) and then gated: onnxruntime must reproduce the
PyTorch wrapper at the traced size and at a second size, or the stage fails and nothing is moved
into place.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..audit import audit_file, check_kv_agreement
from ..checkpoint import (
    BUNDLE_CHECKPOINT_FILES,
    CheckpointSource,
    checkpoint_entry,
    copy_processor_files,
    load_export_model,
)
from ..errors import GraniteOnnxError
from ..identity import make_export_id, set_export_id
from ..layout import check_layout, share_llm_weights
from ..registry import CTC_CONTRACT, Entry
from ..runtime.bundle import bundle_features, ctc_bundle_features, graph_file
from ..runtime.ctc_features import CtcFeatureConfig
from ..runtime.features import FeatureConfig
from ..runtime.prompt import PROMPTS_FILE, PromptStyle
from ..runtime.sessions import open_session
from ..sidecar import sidecar_name, write_with_sidecar
from ..specs import (
    ALL_GRAPHS,
    BUNDLE_GRAPHS,
    DECODE_STEP,
    FRONTEND,
    IR_VERSION,
    OPSET,
    PROMPT_ENCODE,
    CtcDims,
    GraphSpec,
    ModelDims,
    dims_from_config,
    dummy_inputs,
    graph_specs,
)
from ..staging import check_output_dir, staged_dir
from ..stamps import Stamp, digests, folder_files, stored_report, write_stamp
from ..toolchain import peak_rss_mib, versions
from ..userfiles import one_line
from ..verify import verify_bundle
from .ctc_frontend import build_ctc_frontend
from .frontend import build_frontend
from .frontend_check import check_frontend
from .trace import reference_outputs, trace_graph
from .writer import finalise

REPORT_FILE = "export_report.json"
EXPORTER = {
    "path": "torch.onnx.export (TorchScript)",
    "dynamo": False,
    "opset": OPSET,
    "ir_version": IR_VERSION,
    "external_data": "one <graph>.onnx_data sidecar per graph; tensors over 1 KiB external",
    "do_constant_folding": True,
}


def exporter_json(layout: str) -> dict:
    if layout != "shared":
        return dict(EXPORTER)
    return {
        **EXPORTER,
        "external_data": "one <graph>.onnx_data sidecar per graph, plus llm.shared.onnx_data holding the"
        " weights prompt_encode and decode_step have in common; tensors over 1 KiB external",
    }


# Second size for the gate: an exact multiple of the 200-frame attention block (the classic
# length a traced block count gets wrong), a batch of 2, a longer past.
CHECK_SIZES = {"batch": 2, "frames": 200, "past": 23}


def check_sizes(dims: ModelDims | CtcDims) -> dict[str, dict]:
    """The gate's sizes besides the traced one. The CTC graph is traced at 430 frames, where every layer
    pads its last attention block; it is checked where no layer pads (context * 2 ** subsampling frames) and
    at 9 frames (one partial block, odd at every rate), each a batch of 2 whose second row is part masked."""
    if isinstance(dims, CtcDims):
        return {
            "no padding": {"batch": 2, "frames": dims.context_size * 2**dims.subsampling},
            "short": {"batch": 2, "frames": 9},
        }
    return {"other": CHECK_SIZES}


@dataclass(frozen=True)
class ExportOptions:
    graphs: tuple[str, ...] = BUNDLE_GRAPHS
    check: bool = True
    rtol: float = 1e-4  # max |onnx - torch| <= rtol * (1 + max |torch|): float32 reassociation only
    length_patches: bool = True  # False only to reproduce the traced-length bug in tests
    # "per-graph": one sidecar per graph, as the published bundle. "shared": prompt_encode and decode_step
    # point the weights they have in common (the whole LLM) into one llm.shared.onnx_data, so the FP32
    # bundle holds the LLM once on disk, and a runtime that maps its weights holds it once in memory.
    layout: str = "per-graph"
    # The front-end graph's gate runs on every clip of this folder (and on synthetic signals); a folder
    # that is not there leaves the synthetic signals only, said in the report and in the progress lines.
    frontend_clips: str | None = "clips"
    frontend_compute: str = "float64"  # between its float32 input and output (see export/frontend.py)
    # The default instruction the bundle records (granite_prompts.json); None: the registry entry's for
    # this checkpoint's name.
    prompt: str | None = None


@dataclass(frozen=True)
class GraphReport:
    name: str
    file: str
    sidecar: str
    seconds: float
    nodes: int
    duplicates_removed: int
    max_abs_error: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    source: dict
    graphs: tuple[GraphReport, ...]
    copied_files: tuple[str, ...]
    seconds: float
    peak_rss_mib: float
    toolchain: dict = field(default_factory=versions)
    exporter: dict = field(default_factory=lambda: dict(EXPORTER))
    export_id: str | None = None
    shared_layout: dict | None = None  # sidecar.SharedLayout of the shared layout, else None
    frontend: dict | None = None  # export.frontend_check.FrontendCheck of frontend.onnx, when checked
    skipped: bool = field(default=False, compare=False)  # up to date: nothing was re-exported

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("skipped")
        return data

    @classmethod
    def from_json(cls, data: dict, skipped: bool = False) -> ExportResult:
        graphs = tuple(GraphReport(**g) for g in data["graphs"])
        fields = {k: v for k, v in data.items() if k != "graphs"}
        fields["copied_files"] = tuple(fields.get("copied_files", ()))
        return cls(graphs=graphs, skipped=skipped, **fields)


class ExportCheckError(GraniteOnnxError):
    """onnxruntime disagrees with PyTorch on an exported graph."""


def check_graph(
    model, spec: GraphSpec, dims: ModelDims | CtcDims, path: Path, rtol: float
) -> dict[str, float]:
    """Compare onnxruntime with the PyTorch wrapper at the traced size and at :func:`check_sizes`."""
    session = open_session(path, opt_level="basic", prepack=False)
    errors: dict[str, float] = {}
    for label, sizes in (("traced", {}), *check_sizes(dims).items()):
        feeds = dummy_inputs(spec, dims, seed=1, **sizes)
        want = reference_outputs(model, spec, dims, feeds)
        try:
            got = session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own failures (a shape baked in by the trace) are one line
            raise ExportCheckError(
                f"{spec.name}: onnxruntime fails at the {label} size ({one_line(exc, 160)}): a length was "
                "baked in by the trace"
            ) from exc
        worst = 0.0
        for name, w, g in zip(spec.output_names, want, got, strict=True):
            if w.shape != g.shape:
                raise ExportCheckError(
                    f"{spec.name}: output {name} has shape {g.shape} in ONNX, {w.shape} in PyTorch"
                )
            err = float(np.max(np.abs(w - g))) if w.size else 0.0
            if err > rtol * (1.0 + float(np.max(np.abs(w)))):
                raise ExportCheckError(
                    f"{spec.name}: output {name} differs from PyTorch by {err:.3g} ({label} size)"
                )
            worst = max(worst, err)
        errors[label] = worst
    return errors


def export_graph(
    model,
    spec: GraphSpec,
    dims: ModelDims | CtcDims,
    out_dir: Path,
    options: ExportOptions,
    export_id: str | None = None,
) -> GraphReport:
    start = time.perf_counter()
    out_path = out_dir / graph_file(spec.name)
    # Inside the staging folder: whatever ends a run, the raw trace goes with it.
    with tempfile.TemporaryDirectory(prefix=f".raw-{spec.name}-", dir=out_dir) as raw:
        raw_path = Path(raw) / "raw.onnx"
        trace_graph(model, spec, dims, raw_path, options.length_patches)
        summary = finalise(raw_path, out_path, spec, export_id)
    errors = check_graph(model, spec, dims, out_path, options.rtol) if options.check else {}
    return GraphReport(
        name=spec.name,
        file=out_path.name,
        sidecar=sidecar_name(out_path.name),
        seconds=round(time.perf_counter() - start, 3),
        nodes=summary["nodes"],
        duplicates_removed=summary["duplicates_removed"],
        max_abs_error=errors,
    )


def export_frontend(
    cfg: FeatureConfig | CtcFeatureConfig, out_dir: Path, options: ExportOptions, export_id: str | None = None
) -> tuple[GraphReport, dict | None]:
    """Build frontend.onnx from the feature-extractor settings (a CTC bundle's with deltas and a mask),
    write it with its sidecar, audit it and gate it against the numpy front-end (:mod:`.frontend_check`)."""
    start = time.perf_counter()
    if isinstance(cfg, CtcFeatureConfig):
        model = build_ctc_frontend(cfg, options.frontend_compute)
    else:
        model = build_frontend(cfg, options.frontend_compute)
    if export_id is not None:
        set_export_id(model, export_id)
    out_path = out_dir / graph_file(FRONTEND)
    write_with_sidecar(model, out_dir, out_path)
    audit = audit_file(out_path)
    if not audit.ok:
        raise ExportCheckError(f"{out_path.name} breaks the graph contract: {'; '.join(audit.problems)}")
    check = None
    if options.check:
        clips = Path(options.frontend_clips) if options.frontend_clips else None
        check = check_frontend(out_path, cfg, clips, compute=options.frontend_compute).to_json()
    report = GraphReport(
        name=FRONTEND,
        file=out_path.name,
        sidecar=sidecar_name(out_path.name),
        seconds=round(time.perf_counter() - start, 3),
        nodes=len(model.graph.node),
        duplicates_removed=0,
        max_abs_error={"numpy front-end": check["worst"]} if check else {},
    )
    return report, check


def prompt_style(entry: Entry, source: CheckpointSource, override: str | None = None) -> PromptStyle | None:
    """The entry's prompt for this checkpoint (by its Hub id or fixture name, else its folder's name), with
    ``--prompt`` replacing the default instruction; None for an entry without a prompt (CTC)."""
    style = entry.prompt_style(source.model_id or Path(source.path).name)
    if style is None:
        if override is not None:
            raise GraniteOnnxError(f"--prompt does not apply to {entry.name}: a CTC model takes no prompt")
        return None
    if override is None:
        return style
    if not override.strip():
        raise GraniteOnnxError("--prompt must not be empty: give the instruction the model should follow")
    return replace(style, instruction=override, source="--prompt")


def write_prompts(folder: Path, style: PromptStyle) -> None:
    (folder / PROMPTS_FILE).write_text(json.dumps(style.to_json(), indent=2, ensure_ascii=False) + "\n")
    (folder / PROMPTS_FILE).chmod(0o644)


def chosen_graphs(entry: Entry, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The graphs to export: every graph of the entry's bundle when ``requested`` is the default
    (BUNDLE_GRAPHS), else ``requested``, each of which must be the entry's."""
    if requested == BUNDLE_GRAPHS:
        return entry.bundle_graphs
    foreign = [g for g in requested if g not in entry.bundle_graphs]
    if foreign:
        raise GraniteOnnxError(
            f"--graph {foreign[0]} is not a graph of {entry.name} checkpoints: choose from "
            f"{', '.join(entry.bundle_graphs)}"
        )
    return requested


def source_json(source: CheckpointSource) -> dict:
    return {
        "path": str(source.path),
        "model_id": source.model_id,
        "revision": source.revision,
        "is_fixture": source.is_fixture,
    }


def export_stamp(source: CheckpointSource, options: ExportOptions) -> Stamp:
    """What decides an export's bytes: the checkpoint's files, the options, where it came from."""
    return Stamp(
        stage="export",
        inputs=digests(folder_files(source.path, prefix="checkpoint/")),
        options={**asdict(options), "source": source_json(source)},
    )


def export_bundle(
    source: CheckpointSource,
    out_dir: Path,
    options: ExportOptions = ExportOptions(),
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> ExportResult:
    """Export ``source`` into ``out_dir`` (replaced only when every graph passed its check).

    When ``out_dir`` already holds this export (same checkpoint bytes, options and toolchain, outputs
    intact; see :mod:`granite_onnx.stamps`) nothing is redone unless ``force``, and the stored result
    comes back with ``skipped`` set. ``progress`` receives one line per step (a CLI prints it; a
    notebook may ignore it).
    """
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    unknown = set(options.graphs) - set(ALL_GRAPHS)
    if unknown:
        raise GraniteOnnxError(f"unknown graph(s) {sorted(unknown)}; choose from {', '.join(ALL_GRAPHS)}")
    check_layout(options.layout)
    entry = checkpoint_entry(source.path)  # user mistakes fail here, before any work or output
    graphs = chosen_graphs(entry, options.graphs)
    style = prompt_style(entry, source, options.prompt)
    check_output_dir(Path(out_dir))
    say(f"hashing the files of {source.path} (an unchanged export is skipped)")
    stamp = export_stamp(source, options)
    stored = stored_report(Path(out_dir), stamp, REPORT_FILE, force)
    if stored is not None:
        return ExportResult.from_json(stored, skipped=True)
    # Only what changes the graphs' bytes: a --graph subset or --no-check run gets the same id.
    export_id = make_export_id(stamp.inputs, {"length_patches": options.length_patches}, versions())
    say(f"loading {source.path}")
    model, lora = load_export_model(source.path)
    if lora is not None:
        say(f"merged the LoRA adapter (r {lora.rank}, alpha {lora.alpha:g}) into {', '.join(lora.targets)}")
    dims = dims_from_config(model.config.to_dict())
    specs = graph_specs(dims)
    with staged_dir(Path(out_dir)) as stage:
        reports, frontend = [], None
        if FRONTEND in graphs:
            checking = " and checking it against the numpy front-end" if options.check else ""
            say(f"building frontend.onnx{checking}")
            features = (
                ctc_bundle_features(source.path)
                if entry.contract == CTC_CONTRACT
                else bundle_features(source.path)
            )
            report, frontend = export_frontend(features, stage, options, export_id)
            if frontend and frontend["clips_note"]:
                say(f"WARNING: frontend.onnx: {frontend['clips_note']}")
            reports.append(report)
        for name in (g for g in graphs if g != FRONTEND):
            say(f"exporting {name}" + (" and checking it against PyTorch" if options.check else ""))
            reports.append(export_graph(model, specs[name], dims, stage, options, export_id))
        if {PROMPT_ENCODE, DECODE_STEP} <= set(graphs):  # each file was audited by finalise
            problems = check_kv_agreement(stage / graph_file(PROMPT_ENCODE), stage / graph_file(DECODE_STEP))
            if problems:
                raise ExportCheckError(f"prompt_encode and decode_step disagree: {problems[0]}")
        shared = None
        if options.layout == "shared" and {PROMPT_ENCODE, DECODE_STEP} <= set(graphs):
            say("shared layout: storing the LLM weights of prompt_encode and decode_step once")
            shared = share_llm_weights(stage)
        say("portability audit (granite-onnx verify) of the staged bundle")
        failed = [c for c in verify_bundle(stage) if not c.ok]
        if failed:
            raise ExportCheckError(f"{failed[0].item} fails {failed[0].check}: {failed[0].detail}")
        copied = copy_processor_files(source.path, stage, BUNDLE_CHECKPOINT_FILES)
        if style is not None:
            write_prompts(stage, style)
        result = ExportResult(
            out_dir=str(out_dir),
            source={**source_json(source), "family": entry.name, "lora": lora.to_json() if lora else None},
            graphs=tuple(reports),
            copied_files=tuple(sorted(copied)),
            seconds=round(time.perf_counter() - start, 3),
            peak_rss_mib=peak_rss_mib(),
            export_id=export_id,
            exporter=exporter_json(options.layout),
            shared_layout=shared,
            frontend=frontend,
        )
        (stage / REPORT_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        write_stamp(stage, stamp.with_outputs(stage, folder_files(stage)))
    return result
