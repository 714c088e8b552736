"""What a bundle folder holds, read without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError
from ..identity import check_same_export
from ..registry import graphs_of_model_type
from ..specs import (
    GRAPH_NAMES,
    CtcDims,
    GraphSpec,
    ModelDims,
    dims_from_config,
    graph_specs,
)
from ..userfiles import is_dir, is_file, one_line, read_json, read_json_object
from .ctc_features import CtcFeatureConfig
from .features import FeatureConfig

# The fix for a bundle file that is corrupt or hand-edited: the export writes (or copies) all of them.
REEXPORT = "re-run `granite-onnx export` to rewrite the bundle"


def graph_file(name: str, tier: str | None = None) -> str:
    """``encoder.onnx`` for FP32, ``encoder_int8.onnx`` for a tier."""
    return f"{name}_{tier}.onnx" if tier else f"{name}.onnx"


def bundle_graph_names(folder: Path) -> tuple[str, ...]:
    """The model graphs of the bundle at ``folder``, as its registry entry (by config.json's model_type)
    declares them: ``ctc`` for 5.0 CTC, else the autoregressive three (also when config.json is missing or
    unreadable: Bundle.open says so)."""
    try:
        config = read_json(Path(folder) / "config.json", BundleError, REEXPORT)
    except BundleError:
        return GRAPH_NAMES
    return graphs_of_model_type(config.get("model_type") if isinstance(config, dict) else None)


def tier_fp32_graphs(folder: Path, tier: str) -> tuple[str, ...]:
    """Graphs a tier runs in FP32, as its ``quantise_<tier>.json`` declares (the fp16 tier converts only
    the encoder). A tier without that declaration must have all three graphs of its own: a missing
    quantised graph is never silently replaced by the FP32 one."""
    report = Path(folder) / f"quantise_{tier}.json"
    if not is_file(report):  # a --tier too long for a file name is simply not there
        return ()
    try:
        data = read_json_object(report, BundleError, "")
    except BundleError:  # unreadable: no declaration, so the tier must have all its own graphs
        return ()
    declared = data.get("fp32_graphs")
    if not isinstance(declared, list):
        return ()
    return tuple(n for n in declared if isinstance(n, str) and n in bundle_graph_names(folder))


def resolve_graphs(folder: Path, tier: str | None) -> tuple[dict[str, Path], list[str]]:
    """The file each graph of ``tier`` runs from, and the files that are missing."""
    folder = Path(folder)
    fp32 = tier_fp32_graphs(folder, tier) if tier else ()
    paths, missing = {}, []
    for name in bundle_graph_names(folder):
        path = folder / graph_file(name, None if name in fp32 else tier)
        paths[name] = path
        if not is_file(path):
            missing.append(path.name)
    return paths, missing


def bundle_features(folder: Path, fix: str = REEXPORT) -> FeatureConfig:
    """The feature-extractor settings of a bundle or checkpoint folder: its ``preprocessor_config.json``,
    or the extractor's defaults when it has none (as ``from_pretrained`` would build it)."""
    pre = Path(folder) / "preprocessor_config.json"
    return FeatureConfig.from_file(pre, fix) if pre.is_file() else FeatureConfig()


def ctc_bundle_features(folder: Path, fix: str = REEXPORT) -> CtcFeatureConfig:
    """The 5.0 feature extractor's settings of a CTC bundle or checkpoint (its defaults when absent)."""
    pre = Path(folder) / "preprocessor_config.json"
    return CtcFeatureConfig.from_file(pre, fix) if pre.is_file() else CtcFeatureConfig()


@dataclass(frozen=True)
class Bundle:
    """A bundle folder: graphs, ``config.json`` (dims, token ids) and processor files. ``dims`` is a
    CtcDims (and ``features`` a CtcFeatureConfig) for a CTC bundle."""

    folder: Path
    dims: ModelDims | CtcDims
    features: FeatureConfig | CtcFeatureConfig
    eos_token_ids: tuple[int, ...]
    tier: str | None = None
    graphs: dict[str, Path] | None = None  # graph name -> file this tier runs

    @classmethod
    def open(cls, folder: Path, tier: str | None = None) -> Bundle:
        folder = Path(folder)
        if not is_dir(folder):
            raise BundleError(
                f"bundle folder {folder} does not exist: run `granite-onnx export --out-dir {folder}`"
            )
        config_path = folder / "config.json"
        if not is_file(config_path):
            raise BundleError(
                f"{config_path} is missing: {folder} is not a granite-onnx bundle (export again)"
            )
        graphs, missing = resolve_graphs(folder, tier)
        if missing:
            raise BundleError(
                f"{folder} lacks {', '.join(missing)}: run the export (or quantise) stage again"
            )
        config = read_json_object(config_path, BundleError, REEXPORT)
        try:
            dims = dims_from_config(config)
        except ValueError as exc:
            raise BundleError(f"{config_path}: {one_line(exc)}: {REEXPORT}") from exc
        check_same_export(graphs)  # a graph copied in from another bundle is refused before it runs
        if isinstance(dims, CtcDims):  # no end of sequence: CTC emits one label per frame
            return cls(folder, dims, ctc_bundle_features(folder), (), tier, graphs)
        return cls(folder, dims, bundle_features(folder), eos_ids(folder, config), tier, graphs)

    @property
    def is_ctc(self) -> bool:
        return isinstance(self.dims, CtcDims)

    @property
    def specs(self) -> dict[str, GraphSpec]:
        return graph_specs(self.dims)

    def path(self, name: str) -> Path:
        """The file graph ``name`` runs from in this bundle's tier."""
        return (self.graphs or {}).get(name) or self.folder / graph_file(name, self.tier)


def eos_ids(folder: Path, config: dict) -> tuple[int, ...]:
    """End-of-sequence ids, from generation_config.json where present (what ``generate`` uses), else from
    config.json's ``text_config``.

    An id that is not an integer would never equal a generated token, so decoding would silently run
    to the token budget every time: it is refused here, naming the file it came from.
    """
    gen = folder / "generation_config.json"
    source = gen
    value = read_json_object(gen, BundleError, REEXPORT).get("eos_token_id") if gen.is_file() else None
    if value is None:
        source = folder / "config.json"
        value = config["text_config"].get("eos_token_id")  # text_config: checked by ModelDims.from_config
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise BundleError(
            f"{source}: eos_token_id must be a token id or a list of them, got {one_line(repr(value), 60)}: "
            f"{REEXPORT}"
        )
    return tuple(ids)


def available_tiers(folder: Path) -> list[str | None]:
    """FP32 (None) plus every tier whose graphs all resolve (see :func:`resolve_graphs`), by name."""
    folder = Path(folder)
    found = set()
    for name in bundle_graph_names(folder):
        found |= {p.stem[len(name) + 1 :] for p in folder.glob(f"{name}_*.onnx")}
    return [None] + [t for t in sorted(found) if not resolve_graphs(folder, t)[1]]
