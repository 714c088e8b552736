"""Re-save a graph with exactly one ``<graph>.onnx_data`` sidecar, one tensor at a time.

Tools such as ``onnxruntime.quantization`` write their own external-data layout (``x.onnx.data``,
some large tensors left inline in typed fields). ``onnx.save_model`` can fix that only with every
weight loaded at once, which for a 7 GB LLM graph doubles the peak memory. This module loads the
graph's protobuf without its weights and copies each tensor into the new sidecar in turn, so the
peak is the protobuf plus the largest single tensor. Offsets are page aligned, so onnxruntime can
memory-map each weight. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .audit import INLINE_LIMIT, SHARED_SUFFIX
from .staging import temp_prefix

ALIGN = 4096
_COPY_CHUNK = 64 << 20


def sidecar_name(graph_file: str | Path) -> str:
    return Path(graph_file).stem + ".onnx_data"


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, subgraphs included: every place a weight can live."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from graph_tensors(sub)


def _inline_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's little-endian raw bytes, whichever typed field holds them."""
    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


def _to_raw(tensor: onnx.TensorProto, raw: bytes) -> None:
    """Store a small inline tensor as raw_data, whichever typed field it came in: one spelling per value,
    so the same weights give the same bytes whichever tool made the tensor."""
    if tensor.data_type == onnx.TensorProto.STRING or tensor.HasField("raw_data"):
        return
    _clear_data(tensor)
    tensor.raw_data = raw


def _clear_data(tensor: onnx.TensorProto) -> None:
    for field in (
        "float_data",
        "int32_data",
        "string_data",
        "int64_data",
        "double_data",
        "uint64_data",
        "raw_data",
    ):
        tensor.ClearField(field)


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` an external reference (onnx's own helper insists on raw_data being set first)."""
    _clear_data(tensor)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _chunks(src: Path, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``src`` from ``offset``, at most 64 MiB at a time."""
    with src.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise OSError(f"{src} ends before byte {offset + length}: truncated external data")
            yield chunk
            left -= len(chunk)


def _copy_range(src: Path, offset: int, length: int, out) -> None:
    for chunk in _chunks(src, offset, length):
        out.write(chunk)


def _external_range(tensor: onnx.TensorProto, base: Path) -> tuple[Path, int, int]:
    info = ExternalDataInfo(tensor)
    path = base / info.location
    offset = info.offset or 0
    length = info.length if info.length is not None else path.stat().st_size - offset
    return path, offset, length


def rewrite_with_sidecar(src: Path, dst: Path) -> Path:
    """Write ``dst`` (+ ``<dst stem>.onnx_data``) from the graph file at ``src``, streaming its weights.

    ``dst`` must not be ``src``. Returns the sidecar path.
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("rewrite_with_sidecar needs a destination other than its source")
    return write_with_sidecar(onnx.load(str(src), load_external_data=False), src.parent, dst)


def write_with_sidecar(
    model: onnx.ModelProto,
    base: Path,
    dst: Path,
    transforms: Mapping[str, Callable[[bytes], bytes]] | None = None,
) -> Path:
    """Write ``model`` at ``dst`` with one sidecar, copying each weight in turn.

    External references in ``model`` resolve against ``base``; inline tensors over 1 KiB move to
    the sidecar (and are cleared from ``model``); smaller ones stay inline, because onnxruntime
    refuses shape-driving tensors such as Reshape targets that live in external data.
    ``transforms`` maps a tensor's name to a function of its stored bytes whose result is written
    instead: a converter that only re-typed an external tensor (the fp16 tier) has its bytes
    converted here, one tensor at a time, rather than every weight loaded at once.
    """
    dst = Path(dst)
    data = dst.with_name(sidecar_name(dst))
    transforms = transforms or {}
    with data.open("wb") as out:
        for tensor in graph_tensors(model.graph):
            convert = transforms.get(tensor.name)
            if uses_external_data(tensor):
                path, offset, length = _external_range(tensor, Path(base))
                if length <= INLINE_LIMIT or convert:
                    raw = b"".join(_chunks(path, offset, length))
                    raw = convert(raw) if convert else raw
                    if len(raw) <= INLINE_LIMIT:
                        _clear_data(tensor)
                        del tensor.external_data[:]
                        tensor.ClearField("data_location")
                        tensor.raw_data = raw
                        continue
                    length = len(raw)
                    write = lambda o, r=raw: o.write(r)  # noqa: E731
                else:
                    write = lambda o, p=path, s=offset, n=length: _copy_range(p, s, n, o)  # noqa: E731
            else:
                raw = _inline_bytes(tensor)
                if len(raw) <= INLINE_LIMIT:
                    _to_raw(tensor, raw)
                    continue
                length = len(raw)
                write = lambda o, r=raw: o.write(r)  # noqa: E731
            out.write(b"\0" * ((-out.tell()) % ALIGN))
            start = out.tell()
            write(out)
            _point_to(tensor, data.name, start, length)
    dst.write_bytes(model.SerializeToString())
    for f in (dst, data):
        os.chmod(f, 0o644)
    return data


# --- the shared layout: the LLM's weights stored once for prompt_encode and decode_step ---------------------


def shared_sidecar_name(stem: str) -> str:
    """``llm.shared.onnx_data``: the one file several graphs of a bundle point their common weights into."""
    return f"{stem}{SHARED_SUFFIX}"


def external_files(path: Path) -> list[Path]:
    """Every file the graph at ``path`` reads its weights from: its own sidecar first, then any shared one.

    Read without the weights. A graph whose header cannot be read is taken to use its own sidecar only.
    """
    path = Path(path)
    own = path.with_name(sidecar_name(path))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable graphs are reported by the audit, not here
        return [own]
    others = {ExternalDataInfo(t).location for t in graph_tensors(model.graph) if uses_external_data(t)}
    return [own, *sorted(path.parent / loc for loc in others - {own.name})]


@dataclass(frozen=True)
class SharedLayout:
    """What :func:`share_weights` did: the shared file, how many tensors and bytes it holds, and the bytes
    each graph's own sidecar kept."""

    shared_file: str
    tensors: int
    shared_bytes: int
    own_bytes: dict[str, int]


def _tensor_key(path: Path, offset: int, length: int) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path, offset, length):
        digest.update(chunk)
    return f"{length}:{digest.hexdigest()}"


def share_weights(paths: Sequence[Path], shared_stem: str) -> SharedLayout:
    """Rewrite the graphs at ``paths`` (one folder) so that every weight byte-identical in two or more of
    them is stored once, in ``<shared_stem>.shared.onnx_data``; each graph's own sidecar keeps the rest.

    Valid ONNX external data (a tensor's ``location`` may name any file beside the graph), so any
    onnxruntime, the Rust ``ort`` crate too, loads each graph on its own. Weights are matched by their
    bytes (sha256), not their names, because constant folding names a weight differently in each graph.
    Streamed, one tensor at a time; files are replaced only once all are written.
    """
    paths = [Path(p) for p in paths]
    folder = paths[0].parent
    models = {p: onnx.load(str(p), load_external_data=False) for p in paths}
    keys: dict[tuple[Path, int], str] = {}
    owners: dict[str, set[Path]] = {}
    for p, model in models.items():
        for i, tensor in enumerate(graph_tensors(model.graph)):
            if uses_external_data(tensor):
                src, offset, length = _external_range(tensor, folder)
                if length > INLINE_LIMIT:
                    keys[p, i] = key = _tensor_key(src, offset, length)
                    owners.setdefault(key, set()).add(p)
    shared_keys = {k for k, o in owners.items() if len(o) > 1}
    shared = folder / shared_sidecar_name(shared_stem)

    def temp(target: Path) -> Path:  # swept by staging.sweep_stale if this process is killed
        return target.with_name(temp_prefix(target, "share") + "0")

    tmp = {p: (temp(p), temp(p.with_name(sidecar_name(p)))) for p in paths}
    tmp_shared = temp(shared)
    placed: dict[str, tuple[int, int]] = {}
    own_bytes = {}
    try:
        with tmp_shared.open("wb") as shared_out:
            for p, model in models.items():
                graph_tmp, data_tmp = tmp[p]
                with data_tmp.open("wb") as own_out:
                    for i, tensor in enumerate(graph_tensors(model.graph)):
                        if not uses_external_data(tensor):
                            continue
                        key = keys.get((p, i))  # None for small external tensors: never shared
                        src, offset, length = _external_range(tensor, folder)
                        is_shared = key in shared_keys
                        out, name = (shared_out, shared.name) if is_shared else (own_out, sidecar_name(p))
                        if key in shared_keys and key in placed:
                            _point_to(tensor, name, *placed[key])
                            continue
                        out.write(b"\0" * ((-out.tell()) % ALIGN))
                        start = out.tell()
                        _copy_range(src, offset, length, out)
                        if key in shared_keys:
                            placed[key] = (start, length)
                        _point_to(tensor, name, start, length)
                    own_bytes[p.name] = own_out.tell()
                graph_tmp.write_bytes(model.SerializeToString())
            shared_bytes = shared_out.tell()
        for p in paths:  # everything is written: now swap the files in
            graph_tmp, data_tmp = tmp[p]
            data_tmp.replace(p.with_name(sidecar_name(p)))
            graph_tmp.replace(p)
        tmp_shared.replace(shared)
    finally:
        for f in (tmp_shared, *(f for pair in tmp.values() for f in pair)):
            f.unlink(missing_ok=True)
    for f in (shared, *paths, *(p.with_name(sidecar_name(p)) for p in paths)):
        os.chmod(f, 0o644)
    return SharedLayout(shared.name, len(placed), shared_bytes, own_bytes)
