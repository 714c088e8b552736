"""Which export a graph came from, so graphs of two bundles are never mixed.

Export writes one id (a hash of the checkpoint's bytes, the export options and the toolchain) into
every graph's ``metadata_props``; quantised graphs inherit it from their FP32 source. A bundle whose
graphs disagree (an ``encoder.onnx`` copied in from another export) would run and transcribe garbage,
or fail deep inside onnxruntime with a shape error; reading the ids instead costs one small
protobuf parse per graph (the weights stay in their sidecars).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import onnx

from .errors import BundleError

EXPORT_ID_KEY = "granite_onnx.export_id"


def make_export_id(checkpoint_digests: Mapping[str, str], options: dict, toolchain: dict) -> str:
    """16 hex digits from what decides the graphs' bytes; no paths, so every machine agrees on it."""
    key = {"checkpoint": dict(checkpoint_digests), "options": options, "toolchain": toolchain}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_export_id(path: Path) -> str | None:
    """The export id stored in a graph, or None (a graph from another tool, or a pre-id bundle)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not a graph at all
        raise BundleError(
            f"{path} is not a readable ONNX graph ({type(exc).__name__}): re-run the export"
        ) from exc
    return next((p.value for p in model.metadata_props if p.key == EXPORT_ID_KEY), None)


def set_export_id(model: onnx.ModelProto, export_id: str) -> None:
    """Record ``export_id`` in ``model`` (replacing any earlier one)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != EXPORT_ID_KEY]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**dict(keep), EXPORT_ID_KEY: export_id})


def copy_export_id(src: Path, dst: Path) -> None:
    """Give ``dst`` (a graph derived from ``src``) the id of ``src``; only the small .onnx is rewritten."""
    export_id = read_export_id(src)
    if export_id is None or read_export_id(dst) == export_id:
        return
    model = onnx.load(str(dst), load_external_data=False)
    set_export_id(model, export_id)
    onnx.save_model(model, str(dst))


def check_same_export(paths: Mapping[str, Path]) -> None:
    """Raise a one-line BundleError when two graphs a bundle runs carry different export ids.

    Graphs without an id (another tool's, an older bundle's) cannot be placed and are let through, as
    are unreadable ones: opening their session reports those, naming the file.
    """
    ids = {}
    for name, path in paths.items():
        try:
            export_id = read_export_id(path)
        except BundleError:
            continue
        if export_id is not None:
            ids[name] = export_id
    if len(set(ids.values())) <= 1:
        return
    counts: dict[str, int] = {}
    for value in ids.values():
        counts[value] = counts.get(value, 0) + 1
    majority = max(counts, key=lambda v: counts[v])
    odd = next(name for name, value in ids.items() if value != majority)
    raise BundleError(
        f"{paths[odd]} comes from another export (export id {ids[odd]} vs {majority}) than the bundle's "
        "other graphs: copy the whole bundle folder, or re-run the export"
    )
