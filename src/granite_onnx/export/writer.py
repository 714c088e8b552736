"""Turn what ``torch.onnx.export`` wrote into a contract-conforming file pair.

The TorchScript exporter writes IR 9, may spread large weights over many external files, and
constant folding can store one weight twice (a transposed copy of a tied embedding). This module
re-saves every graph as IR 10 with exactly one ``<graph>.onnx_data`` sidecar, tensors of at most
1 KiB kept inline (onnxruntime refuses shape-driving tensors such as Reshape targets when they live
in external data), each weight stored once.

The weights are never all in memory: the graph is loaded without them and each tensor is read,
hashed and copied in turn (:func:`granite_onnx.sidecar.write_with_sidecar`). At full size the old
``onnx.save_model`` re-save added 5.4 GiB to the export's peak (16.9 GiB for an LLM graph).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from ..audit import INLINE_LIMIT, audit_file
from ..identity import set_export_id
from ..sidecar import write_with_sidecar
from ..specs import IR_VERSION, OPSET, GraphSpec


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.dtype.str.encode() + str(array.shape).encode() + array.tobytes()).hexdigest()


def _rename_inputs(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Point every node input (subgraphs included) at the kept initializer."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_inputs(attr.g, renames)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_inputs(g, renames)
    for out in graph.output:
        if out.name in renames:
            out.name = renames[out.name]


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move ``Constant`` nodes over the inline limit into initializers, so they reach the sidecar.

    Non-persistent buffers (the conformer's 200 x 200 relative-distance table) are traced as
    ``Constant`` nodes whose tensor would otherwise stay inside the ``.onnx`` file.
    """
    graph = model.graph
    moved, keep = 0, []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            array = numpy_helper.to_array(value.t)
            if array.nbytes > INLINE_LIMIT:
                graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
                moved += 1
                continue
        keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def tensor_array(tensor: onnx.TensorProto, base: Path | None = None) -> np.ndarray:
    """One tensor's values, read from its external file under ``base`` when it has one; ``tensor``
    itself is left as it is (still external), so only this one weight is held."""
    if base is not None and uses_external_data(tensor):
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        load_external_data_for_tensor(copy, str(base))
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
        return numpy_helper.to_array(copy)
    return numpy_helper.to_array(tensor)


def deduplicate_initializers(model: onnx.ModelProto, base: Path | None = None) -> int:
    """Store each weight once.

    Byte-identical initializers collapse into one. A 2-D initializer that is the transpose of
    another (what constant folding makes of a tied ``lm_head``) is replaced by a ``Transpose`` node
    over the original, which onnxruntime folds once at session start. External weights are read from
    ``base`` one at a time. Returns how many were removed.
    """
    graph = model.graph
    seen: dict[str, str] = {}
    transposed: dict[str, str] = {}
    renames: dict[str, str] = {}
    keep, new_nodes = [], []
    for init in graph.initializer:
        array = tensor_array(init, base)
        if array.nbytes <= INLINE_LIMIT:
            keep.append(init)
            continue
        key = _digest(array)
        if key in seen:
            renames[init.name] = seen[key]
            continue
        if key in transposed:
            new_nodes.append(
                helper.make_node(
                    "Transpose",
                    [transposed[key]],
                    [init.name],
                    perm=[1, 0],
                    name=f"/dedup/Transpose_{init.name}",
                )
            )
            continue
        seen[key] = init.name
        if array.ndim == 2:
            transposed[_digest(np.ascontiguousarray(array.T))] = init.name
        keep.append(init)
        del array
    removed = len(graph.initializer) - len(keep)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        _rename_inputs(graph, renames)
        for node in reversed(new_nodes):
            graph.node.insert(0, node)
    return removed


def normalise_header(model: onnx.ModelProto) -> None:
    """IR 10 and a single ``ai.onnx`` opset import; refuse any node from another domain."""
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise RuntimeError(f"exported graph uses non-default op domains {foreign}; only ai.onnx is allowed")
    model.ir_version = IR_VERSION
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", OPSET))


def apply_io_spec(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Stamp the spec's names, dtypes and shapes on the graph inputs and outputs.

    The exporter's shape inference leaves names such as ``Concatpresent.0.key_dim_3`` where the
    spec has a fixed size, and numbers where the spec has a symbolic dim; the spec is the contract.
    """
    for values, tensors, what in (
        (model.graph.input, spec.inputs, "inputs"),
        (model.graph.output, spec.outputs, "outputs"),
    ):
        names = [v.name for v in values]
        if names != [t.name for t in tensors]:
            raise RuntimeError(f"{spec.name}: exported {what} {names} differ from the spec")
        for value, tensor in zip(values, tensors, strict=True):
            value.type.CopyFrom(
                helper.make_tensor_type_proto(
                    helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype)), list(tensor.shape)
                )
            )


def save_with_sidecar(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``path`` and its one sidecar (0644) from a model held in memory, one tensor at a time.

    ``model``'s large tensors are moved out of it into the sidecar as they are written.
    """
    path = Path(path)
    return write_with_sidecar(model, path.parent, path)


def finalise(raw_path: Path, out_path: Path, spec: GraphSpec, export_id: str | None = None) -> dict:
    """Load the exporter's output, normalise it, write it to ``out_path`` and check it.

    ``export_id`` goes into the graph's metadata (see :mod:`granite_onnx.identity`). Returns a small
    summary (initializers removed as duplicates, node count).
    """
    raw_path = Path(raw_path)
    model = onnx.load(str(raw_path), load_external_data=False)  # the weights stay on disk
    constants_to_initializers(model)
    removed = deduplicate_initializers(model, raw_path.parent)
    normalise_header(model)
    apply_io_spec(model, spec)
    if export_id is not None:
        set_export_id(model, export_id)
    write_with_sidecar(model, raw_path.parent, out_path)
    audit = audit_file(out_path)
    if not audit.ok:
        raise RuntimeError(f"{out_path.name} breaks the graph contract: {'; '.join(audit.problems)}")
    return {"duplicates_removed": removed, "nodes": len(model.graph.node)}
