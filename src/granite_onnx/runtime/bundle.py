"""What a bundle folder holds, read without torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from ..specs import GRAPH_NAMES, GraphSpec, ModelDims, graph_specs
from .features import FeatureConfig


def graph_file(name: str, tier: str | None = None) -> str:
    """``encoder.onnx`` for FP32, ``encoder_int8.onnx`` for a tier."""
    return f"{name}_{tier}.onnx" if tier else f"{name}.onnx"


def tier_fp32_graphs(folder: Path, tier: str) -> tuple[str, ...]:
    """Graphs a tier runs in FP32, as its ``quantise_<tier>.json`` declares (the fp16 tier converts only
    the encoder). A tier without that declaration must have all three graphs of its own: a missing
    quantised graph is never silently replaced by the FP32 one."""
    report = Path(folder) / f"quantise_{tier}.json"
    if not report.is_file():
        return ()
    try:
        declared = json.loads(report.read_text(encoding="utf-8")).get("fp32_graphs", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return ()
    return tuple(n for n in declared if n in GRAPH_NAMES)


def resolve_graphs(folder: Path, tier: str | None) -> tuple[dict[str, Path], list[str]]:
    """The file each graph of ``tier`` runs from, and the files that are missing."""
    folder = Path(folder)
    fp32 = tier_fp32_graphs(folder, tier) if tier else ()
    paths, missing = {}, []
    for name in GRAPH_NAMES:
        path = folder / graph_file(name, None if name in fp32 else tier)
        paths[name] = path
        if not path.is_file():
            missing.append(path.name)
    return paths, missing


@dataclass(frozen=True)
class Bundle:
    """A bundle folder: graphs, ``config.json`` (dims, token ids) and processor files."""

    folder: Path
    dims: ModelDims
    features: FeatureConfig
    eos_token_ids: tuple[int, ...]
    tier: str | None = None
    graphs: dict[str, Path] | None = None  # graph name -> file this tier runs

    @classmethod
    def open(cls, folder: Path, tier: str | None = None) -> Bundle:
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(
                f"bundle folder {folder} does not exist: run `granite-onnx export --out-dir {folder}`"
            )
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise BundleError(
                f"{config_path} is missing: {folder} is not a granite-onnx bundle (export again)"
            )
        graphs, missing = resolve_graphs(folder, tier)
        if missing:
            raise BundleError(
                f"{folder} lacks {', '.join(missing)}: run the export (or quantise) stage again"
            )
        config = json.loads(config_path.read_text())
        pre = folder / "preprocessor_config.json"
        features = FeatureConfig.from_file(pre) if pre.is_file() else FeatureConfig()
        return cls(folder, ModelDims.from_config(config), features, _eos_ids(folder, config), tier, graphs)

    @property
    def specs(self) -> dict[str, GraphSpec]:
        return graph_specs(self.dims)

    def path(self, name: str) -> Path:
        """The file graph ``name`` runs from in this bundle's tier."""
        return (self.graphs or {}).get(name) or self.folder / graph_file(name, self.tier)


def _eos_ids(folder: Path, config: dict) -> tuple[int, ...]:
    """End-of-sequence ids, from generation_config.json where present (what ``generate`` uses)."""
    gen = folder / "generation_config.json"
    value = json.loads(gen.read_text()).get("eos_token_id") if gen.is_file() else None
    if value is None:
        value = config.get("text_config", {}).get("eos_token_id")
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def available_tiers(folder: Path) -> list[str | None]:
    """FP32 (None) plus every tier whose three graphs all resolve (see :func:`resolve_graphs`), by name."""
    folder = Path(folder)
    found = set()
    for name in GRAPH_NAMES:
        found |= {p.stem[len(name) + 1 :] for p in folder.glob(f"{name}_*.onnx")}
    return [None] + [t for t in sorted(found) if not resolve_graphs(folder, t)[1]]
