"""What a quantise run wrote, as plain data: ``quantise_<tier>.json`` beside the graphs.

The metadata stage copies this file verbatim, so every figure here is one the quantise stage
measured on the files it wrote (node counts by op type, bytes before and after, time, memory).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import onnx

from ..sidecar import external_files
from ..toolchain import versions

REPORT_VERSION = 1
REPORT_PREFIX = "quantise_"


def report_file(tier: str) -> str:
    return f"{REPORT_PREFIX}{tier}.json"


def op_counts(path: Path) -> dict[str, int]:
    """Node count per op type of the graph at ``path`` (read without its weights)."""
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def graph_bytes(path: Path) -> int:
    """Bytes on disk of a graph file and every sidecar it reads (a shared one counted whole)."""
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_files(path) if f.is_file())


def count_changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Op types whose count changed, with the signed change (e.g. MatMul -24, MatMulInteger +24)."""
    keys = sorted(set(before) | set(after))
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


@dataclass(frozen=True)
class GraphQuantisation:
    """One graph of a tier: which nodes changed and what it costs on disk."""

    graph: str
    source: str
    file: str
    quantised: dict[str, int]  # nodes quantised (or converted), by the op type they had
    excluded: tuple[str, ...]  # nodes left in FP32 on request (--exclude) or by the tier's own rule
    op_count_changes: dict[str, int]
    bytes_before: int
    bytes_after: int
    seconds: float
    details: dict = field(default_factory=dict)  # tier-specific findings (ranges, calibration, ...)

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else float("nan")


@dataclass(frozen=True)
class TierReport:
    """A whole tier: its graphs, the FP32 graphs it reuses, its options and the toolchain."""

    tier: str
    method: str
    graphs: tuple[GraphQuantisation, ...]
    fp32_graphs: tuple[str, ...]  # graphs this tier runs in FP32 (the fp16 tier converts only the encoder)
    options: dict
    seconds: float
    peak_rss_mib: float
    toolchain: dict = field(default_factory=versions)
    skipped: bool = field(default=False, compare=False)  # up to date: nothing was re-quantised
    warning: str | None = None  # the tier's own warning (see tiers.Tier), shown on the card
    # Whether the written weights can make some CPU's integer kernel saturate (runtime.saturation), and
    # the CPU that wrote them (static calibration ran its FP32 pass there).
    kernel_saturation: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict, skipped: bool = False) -> TierReport:
        """Read back what :meth:`to_json` wrote (for a stage that was up to date)."""
        keys = {f.name for f in fields(GraphQuantisation)}
        graphs = tuple(
            GraphQuantisation(**{k: v for k, v in {**g, "graph": name}.items() if k in keys})
            for name, g in doc["graphs"].items()
        )
        return cls(
            tier=doc["tier"],
            method=doc["method"],
            graphs=graphs,
            fp32_graphs=tuple(doc.get("fp32_graphs", ())),
            options=doc["options"],
            seconds=doc["seconds"],
            peak_rss_mib=doc["peak_rss_mib"],
            toolchain=doc.get("toolchain", {}),
            skipped=skipped,
            warning=doc.get("warning"),
            kernel_saturation=doc.get("kernel_saturation", {}),
            cpu=doc.get("cpu", {}),
        )

    def to_json(self) -> dict:
        doc = asdict(self)
        doc.pop("skipped")
        doc["report_version"] = REPORT_VERSION
        for g, graph in zip(doc["graphs"], self.graphs, strict=True):
            g["excluded"] = list(g["excluded"])
            g["size_ratio"] = round(graph.ratio, 4)
        doc["graphs"] = {g.pop("graph"): g for g in doc["graphs"]}
        doc["fp32_graphs"] = list(self.fp32_graphs)
        return doc

    def write(self, folder: Path) -> Path:
        path = Path(folder) / report_file(self.tier)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path
