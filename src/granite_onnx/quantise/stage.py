"""``granite-onnx quantise``: write one tier's graphs beside the FP32 ones, verified, all or nothing.

Each graph is quantised from the bundle's FP32 file into a staging folder beside the bundle,
re-saved with one ``<graph>_<tier>.onnx_data`` sidecar (streamed, one tensor at a time), and the
tier passes the portability audit (contract, onnx.checker, onnxruntime load with basic and all
optimisations, KV agreement) before its files and ``quantise_<tier>.json`` are merged into the
bundle in one rename. A failed or interrupted run leaves the bundle as it was.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from ..audit import audit_file, check_kv_agreement, check_loads
from ..errors import GraniteOnnxError
from ..identity import copy_export_id
from ..layout import check_layout, share_llm_weights
from ..runtime.bundle import Bundle, graph_file
from ..runtime.cpu import current_cpu
from ..runtime.saturation import tier_verdict
from ..sidecar import external_files
from ..specs import DECODE_STEP, PROMPT_ENCODE
from ..staging import check_output_dir, make_temp_dir, merge_into
from ..stamps import Stamp, digests, folder_files, stored_report, write_stamp
from ..toolchain import peak_rss_mib
from ..userfiles import shown_path
from . import static
from .calibration import CalibrationSet, collect
from .job import GraphJob
from .report import GraphQuantisation, TierReport, count_changes, graph_bytes, op_counts, report_file
from .tiers import TIERS, Tier, tier_graphs


class QuantiseError(GraniteOnnxError):
    """A tier could not be written or failed its audit; the bundle is unchanged."""


@dataclass(frozen=True)
class QuantiseOptions:
    exclude: tuple[str, ...] = ()  # node names or shell patterns (fnmatch) left in full precision
    clips: Path | None = None  # real audio for calibration (int8s) and range checks (fp16)
    calibration: str = "minmax"  # int8s: minmax, percentile or entropy
    decode_steps: int = 16  # decode_step calibration samples per clip (see calibration.collect)
    decode_stride: int = 4  # ... taken every this many greedy steps
    fp16_headroom: float = 4.0  # fp16: keep nodes whose activations exceed 65504 / headroom
    threads: int | None = None
    layout: str = "per-graph"  # "shared": the tier's prompt_encode and decode_step store their LLM once

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["exclude"] = list(self.exclude)
        doc["clips"] = shown_path(self.clips) if self.clips else None
        return doc


def _tier(name: str | Tier) -> Tier:
    if isinstance(name, Tier):  # a tier not in the registry: a candidate recipe being measured (bench/)
        return name
    if name not in TIERS:
        raise GraniteOnnxError(f"unknown tier {name!r}: choose from {', '.join(TIERS)}")
    return TIERS[name]


def expand_exclude(patterns: tuple[str, ...], sources: dict[str, Path]) -> dict[str, list[str]]:
    """Node names per graph matched by ``patterns``; a pattern that matches nothing is a user error."""
    names = {
        g: [n.name for n in onnx.load(str(p), load_external_data=False).graph.node]
        for g, p in sources.items()
    }
    matched = {
        g: sorted({n for n in nodes for pat in patterns if fnmatch.fnmatchcase(n, pat)})
        for g, nodes in names.items()
    }
    unused = [
        pat for pat in patterns if not any(fnmatch.fnmatchcase(n, pat) for ns in names.values() for n in ns)
    ]
    if unused:
        raise GraniteOnnxError(
            f"--exclude {unused[0]!r} matches no node of {', '.join(p.name for p in sources.values())}: "
            "give node names as the ONNX graph spells them (e.g. /lm_head/MatMul) or a pattern"
        )
    return matched


def audit_tier(stage: Path, tier: Tier) -> list[str]:
    """The portability audit of the staged tier files: the same checks as ``granite-onnx verify``."""
    problems = []
    for path in sorted(stage.glob("*.onnx")):
        result = audit_file(path)
        problems += [f"{path.name}: {p}" for p in result.problems]
        if result.ok:
            problems += [f"{path.name}: {p}" for p in check_loads(path)]
    prompt, decode = stage / graph_file(PROMPT_ENCODE, tier.name), stage / graph_file(DECODE_STEP, tier.name)
    if prompt.is_file() and decode.is_file():
        problems += check_kv_agreement(prompt, decode)
    return problems


def tier_stamp(tier: Tier, sources: dict[str, Path], options: QuantiseOptions) -> Stamp:
    """A tier's inputs: the FP32 graphs (and sidecars) it reads and, when it uses them, the clips.

    ``threads`` is left out: it changes how fast a tier is written, not what is written.
    """
    files = {}
    for path in sources.values():
        files[path.name] = path
        for data in external_files(path):  # its own sidecar, and the shared one in the shared layout
            files[data.name] = data
    if tier.needs_clips and options.clips is not None:
        files.update(folder_files(Path(options.clips), prefix="clips/"))
    doc = {k: v for k, v in options.to_json().items() if k != "threads"}
    return Stamp(stage=f"quantise-{tier.name}", inputs=digests(files), options=doc)


def quantise_bundle(
    bundle: Path,
    tier_name: str | Tier,
    options: QuantiseOptions = QuantiseOptions(),
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> TierReport:
    """Write tier ``tier_name`` of the FP32 bundle at ``bundle``; returns what was measured.

    A tier already written from the same FP32 graphs, clips, options and toolchain (its stamp says so
    and its files are intact) is not redone unless ``force``; its stored report comes back, ``skipped``.
    """
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    tier = _tier(tier_name)
    fp32 = Bundle.open(Path(bundle).resolve())  # absolute: onnxruntime's quantisers run in the graph's folder
    bundle = fp32.folder
    check_output_dir(bundle)
    check_layout(options.layout)
    if options.calibration not in static.METHODS:
        raise GraniteOnnxError(
            f"unknown calibration {options.calibration!r}: choose from {', '.join(static.METHODS)}"
        )
    graph_names = fp32.dims.graph_names
    contract = "ctc" if fp32.is_ctc else "autoregressive"
    if contract not in tier.contracts:
        raise GraniteOnnxError(
            f"tier {tier.name} quantises a language model, which a {contract} bundle has none of"
        )
    written = tier_graphs(tier, graph_names)
    if not written:
        raise GraniteOnnxError(f"tier {tier.name} writes no graph of this bundle ({', '.join(graph_names)})")
    sources = {g: fp32.path(g) for g in written}
    excluded = expand_exclude(options.exclude, sources)
    if tier.needs_clips and options.clips is None:
        raise GraniteOnnxError(f"tier {tier.name} calibrates on real audio: pass --clips DIR")
    stamp = tier_stamp(tier, sources, options)
    stored = stored_report(bundle, stamp, report_file(tier.name), force)
    if stored is not None:
        return TierReport.from_json(stored, skipped=True)
    stage = make_temp_dir(bundle, f"quantise-{tier.name}")
    scratch = stage / ".calibration"  # calibration feeds; removed before the merge
    try:
        calib: CalibrationSet | None = None
        if tier.needs_clips:
            say(f"running the calibration clips of {options.clips} through the FP32 bundle")
            calib = collect(
                bundle,
                Path(options.clips),
                scratch,
                options.decode_steps,
                options.decode_stride,
                options.threads,
                written,
            )
        graphs = []
        for name, src in sources.items():
            say(f"{tier.name}: quantising {src.name}")
            t0 = time.perf_counter()
            dst = stage / graph_file(name, tier.name)
            scratch_graph = Path(tempfile.mkdtemp(prefix="raw-", dir=stage))
            job = GraphJob(
                src,
                dst,
                tuple(excluded[name]),
                scratch_graph,
                calib,
                options.calibration,
                options.fp16_headroom,
            )
            try:
                counts, details = tier.write_graph(job)
            finally:
                shutil.rmtree(scratch_graph, ignore_errors=True)
            copy_export_id(src, dst)
            graphs.append(
                GraphQuantisation(
                    graph=name,
                    source=src.name,
                    file=dst.name,
                    quantised=counts,
                    excluded=tuple(excluded[name]) + tuple(details.get("kept_fp32_by_range", {})),
                    op_count_changes=count_changes(op_counts(src), op_counts(dst)),
                    bytes_before=graph_bytes(src),
                    bytes_after=graph_bytes(dst),
                    seconds=round(time.perf_counter() - t0, 3),
                    details=details,
                )
            )
        if options.layout == "shared" and {PROMPT_ENCODE, DECODE_STEP} <= set(written):
            say(f"{tier.name}: shared layout, the LLM weights of prompt_encode and decode_step stored once")
            share_llm_weights(stage, tier.name)
        say(f"{tier.name}: portability audit")
        problems = audit_tier(stage, tier)
        if problems:
            raise QuantiseError(f"tier {tier.name} fails the portability audit: {problems[0]}")
        report = TierReport(
            tier=tier.name,
            method=tier.method,
            graphs=tuple(graphs),
            fp32_graphs=tuple(g for g in graph_names if g not in written),
            options=options.to_json(),
            seconds=round(time.perf_counter() - start, 3),
            peak_rss_mib=peak_rss_mib(),
            warning=tier.warning,
            kernel_saturation=tier_verdict(stage, tier.name),  # the staged graphs; missing ones skipped
            cpu=current_cpu().to_json(),
        )
        report.write(stage)
        shutil.rmtree(scratch, ignore_errors=True)
        write_stamp(stage, stamp.with_outputs(stage, folder_files(stage)))
        merge_into(bundle, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return report
