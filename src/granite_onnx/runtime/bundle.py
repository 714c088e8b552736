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


@dataclass(frozen=True)
class Bundle:
    """A bundle folder: graphs, ``config.json`` (dims, token ids) and processor files."""

    folder: Path
    dims: ModelDims
    features: FeatureConfig
    eos_token_ids: tuple[int, ...]

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
        missing = [graph_file(n, tier) for n in GRAPH_NAMES if not (folder / graph_file(n, tier)).is_file()]
        if missing:
            raise BundleError(
                f"{folder} lacks {', '.join(missing)}: run the export (or quantise) stage again"
            )
        config = json.loads(config_path.read_text())
        pre = folder / "preprocessor_config.json"
        features = FeatureConfig.from_file(pre) if pre.is_file() else FeatureConfig()
        return cls(folder, ModelDims.from_config(config), features, _eos_ids(folder, config))

    @property
    def specs(self) -> dict[str, GraphSpec]:
        return graph_specs(self.dims)

    def path(self, name: str, tier: str | None = None) -> Path:
        return self.folder / graph_file(name, tier)


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
    """FP32 (None) plus every tier whose three graphs are all present, in name order."""
    folder = Path(folder)
    tiers: list[str | None] = [None]
    prefix = f"{GRAPH_NAMES[0]}_"
    for path in sorted(folder.glob(f"{prefix}*.onnx")):
        tier = path.stem[len(prefix) :]
        if all((folder / graph_file(n, tier)).is_file() for n in GRAPH_NAMES):
            tiers.append(tier)
    return tiers
