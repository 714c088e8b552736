"""Re-save a graph with exactly one ``<graph>.onnx_data`` sidecar, one tensor at a time.

Tools such as ``onnxruntime.quantization`` write their own external-data layout (``x.onnx.data``,
some large tensors left inline in typed fields). ``onnx.save_model`` can fix that only with every
weight loaded at once, which for a 7 GB LLM graph doubles the peak memory. This module loads the
graph's protobuf without its weights and copies each tensor into the new sidecar in turn, so the
peak is the protobuf plus the largest single tensor. Offsets are page aligned, so onnxruntime can
memory-map each weight. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .audit import INLINE_LIMIT

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


def _copy_range(src: Path, offset: int, length: int, out) -> None:
    with src.open("rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise OSError(f"{src} ends before byte {offset + length}: truncated external data")
            out.write(chunk)
            left -= len(chunk)


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


def write_with_sidecar(model: onnx.ModelProto, base: Path, dst: Path) -> Path:
    """Write ``model`` at ``dst`` with one sidecar, copying each weight in turn.

    External references in ``model`` resolve against ``base``; inline tensors over 1 KiB move to
    the sidecar (and are cleared from ``model``); smaller ones stay inline, because onnxruntime
    refuses shape-driving tensors such as Reshape targets that live in external data.
    """
    dst = Path(dst)
    data = dst.with_name(sidecar_name(dst))
    with data.open("wb") as out:
        for tensor in graph_tensors(model.graph):
            if uses_external_data(tensor):
                path, offset, length = _external_range(tensor, Path(base))
                if length <= INLINE_LIMIT:
                    with path.open("rb") as f:
                        f.seek(offset)
                        raw = f.read(length)
                    _clear_data(tensor)
                    del tensor.external_data[:]
                    tensor.ClearField("data_location")
                    tensor.raw_data = raw
                    continue
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
