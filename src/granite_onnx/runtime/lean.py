"""A leaner decode_step for one utterance, made at load from the bundle's own file.

The traced decode_step computes its reshape targets at run time from ``Shape`` ops: every layer reads the
batch, the head counts and the cache length off its tensors and concatenates them into a shape. With the
batch fixed (:func:`batch_specialised`) onnxruntime folds the pieces that depend only on the batch, but not a
``Concat`` that still holds one dynamic piece (the cache length), nor the ``Shape`` -> ``Gather`` chain
behind that piece. :func:`fold_shapes` does what onnxruntime does not:

- shape arithmetic whose inputs are all known (``Shape`` of dimensions onnxruntime's symbolic inference
  resolves, then ``Gather``, ``Concat``, integer ``Div`` and the like) becomes constants;
- a reshape target whose pieces are all known but one becomes a constant with -1 there (a reshape keeps
  the element count, so the one unknown piece is what -1 infers, always), and a piece that is the
  input's own dimension at that index (the same symbol) becomes 0, which copies it;
- a ``Transpose`` that moves only axes of length 1 becomes a reshape (the memory order is unchanged), and a
  reshape of a reshape reads the first one's input;
- nodes nobody reads any more are dropped.

What the graph computes is unchanged for the fixed batch; the tests compare it with the file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_PREFIX = "lean/"


def batch_specialised(model: onnx.ModelProto, batch: int = 1) -> onnx.ModelProto:
    """A copy of ``model`` whose symbolic ``batch`` dimension is fixed to ``batch``.

    onnxruntime folds a ``Shape`` whose sliced or gathered dimensions are all known at load, so most of the
    traced shape arithmetic around the batch axis becomes constants: fewer kernels per step, no change to
    what the graph computes for that batch. Feeding another batch is an onnxruntime shape error.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in (*out.graph.input, *out.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.Clear()
                dim.dim_value = batch
    return out


def _symbolic_shape_inference():
    """onnxruntime's ``SymbolicShapeInference``, loaded from its file: importing ``onnxruntime.tools`` runs
    that package's ``__init__``, which imports torch wherever torch is installed, and the runtime never
    imports torch."""
    import importlib.util
    import sys

    import onnxruntime

    name = "granite_onnx._ort_symbolic_shape_infer"
    if name not in sys.modules:
        path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name].SymbolicShapeInference


Dim = int | str | None  # a length, a symbol for a length known only at run time, or nothing known


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """Every value's shape by onnxruntime's symbolic shape inference (onnx's own loses the batch through the
    rotary embedding's broadcasts, which this one follows); two dimensions with one symbol are equal."""
    inference = _symbolic_shape_inference()
    # The inference reads initializer values; weights in a sidecar become inputs of their shape instead
    # (only small inline constants carry values that shapes depend on).
    light = onnx.ModelProto()
    light.CopyFrom(model)
    external = [i for i in light.graph.initializer if i.external_data]
    kept = [i for i in light.graph.initializer if not i.external_data]
    del light.graph.initializer[:]
    light.graph.initializer.extend(kept)
    light.graph.input.extend(
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in external
    )
    inferred = inference.infer_shapes(light, auto_merge=True)
    shapes = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim
            )
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX integer Div: truncation toward zero."""
    return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)


_ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def _evaluate(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray | None:
    """The value of a shape-arithmetic node whose inputs are all constants (None for other ops)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in _ELEMENTWISE:
        return _ELEMENTWISE[op](*args)
    if op == "Div" and args[0].dtype.kind == "i":
        return _int_div(*args)
    if op == "Cast":
        return args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Unsqueeze":
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    if op == "Squeeze" and len(args) == 2:
        return np.squeeze(args[0], tuple(int(a) for a in args[1]))
    if op == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    if op == "Gather":
        return np.take(args[0], args[1], axis=attrs.get("axis", 0))
    return None


def _reshape_target(pieces: list[Dim], data: tuple[Dim, ...]) -> list[int] | None:
    """A constant target equal to ``pieces`` for a reshape of ``data`` (allowzero 0), or None.

    A symbolic piece equal to the data's dimension at the same index becomes 0 (copy that dimension); one
    piece left unknown becomes -1 (what the element count implies), unless a -1 is there already.
    """
    target: list[int] = []
    unknown = 0
    for index, piece in enumerate(pieces):
        if isinstance(piece, int):
            target.append(piece)
        elif piece is not None and index < len(data) and data[index] == piece:
            target.append(0)
        else:
            target.append(-1)
            unknown += 1
    if unknown > 1 or (unknown == 1 and [p for p in pieces if isinstance(p, int)].count(-1)):
        return None
    return target


def _movable(shape: tuple[int, ...], perm: list[int]) -> bool:
    """Whether ``perm`` moves only axes of length 1 (the others keep their order): then it is a reshape."""
    kept = [axis for axis in perm if shape[axis] != 1]
    return kept == sorted(kept)


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with its reshape arithmetic folded as the module docstring says."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    try:
        shapes = _static_shapes(out)
    except Exception:  # an op the symbolic inference does not know: the graph runs unfolded, as exported
        return model
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and not init.external_data and len(init.dims) <= 1:
            consts[init.name] = numpy_helper.to_array(init)
    # A 1-D shape vector known in part (its pieces as Dim), and scalars known to equal a symbolic length.
    partial: dict[str, list[Dim]] = {}
    symbol: dict[str, str] = {}
    producer: dict[str, onnx.NodeProto] = {}
    new_inits: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        """An initializer holding ``value`` in its own dtype (a shape is int64; a Cast may have made a
        float)."""
        new = f"{_PREFIX}{name}"
        if new in consts:  # the same computed value read by another node
            return new
        value = np.asarray(value)
        new_inits.append(numpy_helper.from_array(value, new))
        consts[new] = value
        return new

    for node in graph.node:
        for name in node.output:
            producer[name] = node
        op, inputs = node.op_type, list(node.input)
        if op == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and value.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
                consts[node.output[0]] = numpy_helper.to_array(value)
            continue
        if op == "Shape":
            attrs = {a.name: a.i for a in node.attribute}
            dims = list(shapes.get(inputs[0], ()))
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            if dims:
                piece = dims[start:end]
                if not all(isinstance(d, int) for d in piece):
                    partial[node.output[0]] = piece
                else:
                    consts[node.output[0]] = np.array(piece, np.int64)
            continue
        if op == "Gather" and inputs[0] in partial and inputs[1] in consts:
            index = consts[inputs[1]]
            if index.ndim == 0:
                dim = partial[inputs[0]][int(index)]
                if isinstance(dim, int):
                    consts[node.output[0]] = np.array(dim, np.int64)
                elif dim is not None:
                    symbol[node.output[0]] = dim
            continue
        if op == "Unsqueeze" and inputs[0] not in consts and shapes.get(inputs[0]) == ():
            partial[node.output[0]] = [symbol.get(inputs[0])]  # a scalar made one piece of a shape vector
            continue
        if op == "Concat" and not all(i in consts for i in inputs):
            pieces: list[Dim] = []
            for name in inputs:
                if name in consts and consts[name].ndim == 1:
                    pieces += [int(v) for v in consts[name]]
                elif name in partial:
                    pieces += partial[name]
                else:
                    break
            else:
                partial[node.output[0]] = pieces
            continue
        if op == "Reshape":
            allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
            if inputs[1] in partial and not allowzero:
                folded = _reshape_target(partial[inputs[1]], shapes.get(inputs[0], ()))
                if folded is not None:
                    node.input[1] = constant(node.output[0], np.array(folded, np.int64))
            target = node.input[1]
            if target in consts and (consts[target] > 0).all():
                shapes[node.output[0]] = tuple(int(v) for v in consts[target])
            inner = producer.get(node.input[0])
            if (
                target in consts
                and 0 not in consts[target]
                and inner is not None
                and inner.op_type == "Reshape"
            ):
                node.input[0] = inner.input[0]  # a reshape of a reshape: only the last target counts
            continue
        if op == "Transpose":
            shape = shapes.get(inputs[0])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if shape and all(isinstance(d, int) for d in shape) and perm and _movable(shape, perm):
                target = constant(node.output[0], np.array([shape[axis] for axis in perm], np.int64))
                source = producer.get(inputs[0])
                data = source.input[0] if source is not None and source.op_type == "Reshape" else inputs[0]
                node.CopyFrom(
                    onnx.helper.make_node("Reshape", [data, target], list(node.output), name=node.name)
                )
                shapes[node.output[0]] = tuple(shape[axis] for axis in perm)
            continue
        if all(i in consts for i in inputs if i):
            value = _evaluate(node, [consts[i] for i in inputs if i])
            if value is not None:
                consts[node.output[0]] = value
    # Every value computed above feeds its readers as a constant; the arithmetic behind it is then unread.
    computed = {o for n in graph.node if n.op_type != "Constant" for o in n.output if o in consts}
    for node in graph.node:
        if all(o in consts for o in node.output):
            continue
        for i, name in enumerate(node.input):
            if name in computed:
                node.input[i] = constant(name, consts[name])
    graph.initializer.extend(new_inits)
    _drop_unread(graph)
    return out


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove nodes (last first) and initializers that nothing reads and that are no graph output."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
