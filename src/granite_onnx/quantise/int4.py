"""``int4w`` and ``int4w-gptq``: 4-bit weight-only LLM MatMuls in plain ``ai.onnx`` (blocked DQ -> MatMul).

Every public 4-bit Granite Speech ONNX uses ``com.microsoft`` MatMulNBits, which an ai.onnx-only runtime
cannot promise to run. This tier writes the standard form instead, and onnxruntime >= 1.19 fuses it into
MatMulNBits in memory at load (``DQMatMulToMatMulNBits``)::

    DequantizeLinear(q: int4 [K, N], scale: float32 [K / block, N], axis=0, block_size=block) -> MatMul

with the conditions that fusion needs: a constant 2-D weight [K, N] (not transposed, not shared), axis 0,
a power-of-two block of at least 16, float32 scales. Opset 21 is the first with int4 and blocked
DequantizeLinear, so these graphs (and only these: the audit says so) import ai.onnx 21.

What is quantised how, per graph:

- prompt_encode and decode_step: every MatMul weight [K, N] whose K is a multiple of the block, to int4,
  symmetric (zero point 0), ``scale = max |W| over the block of K / 7``, ``q = clip(rint(W / scale), -8, 7)``
  (an asymmetric uint4 grid is here too, measured and not chosen); the MatMuls of EIGHT_BIT (the head) and
  the embedding table to int8 per output channel / per row, as int8w does;
- the encoder: int8w (8-bit per channel), since 4-bit hurts the conformer (a GGUF port found it).

Two methods choose ``q``: round to nearest (``int4w``), and GPTQ (``int4w-gptq``, Frantar et al. 2022),
which quantises one input row of W at a time and moves its rounding error onto the rows not yet quantised,
weighted by the inverse Hessian ``H = X^T X`` of the MatMul's input X on calibration clips, so the layer's
output ``X W`` moves less than under rounding alone (tested). onnxruntime's own GPTQ writes MatMulNBits, not
this form, so GPTQ is implemented here and checked against RTN and numpy's linear algebra in the tests. On
the trained fixture it did not beat rounding end to end (bench/int4_blocks.py), so RTN is the default tier.

The GPTQ arithmetic is float64 with elementwise numpy operations and ordered reductions only, never BLAS or
LAPACK, whose kernels differ between AVX-512 and AVX2 CPUs in the last bits. Its Hessians still come from
onnxruntime's FP32 activations, which differ there too, so int4w-gptq's bytes depend on the CPU that
calibrates it; int4w's (RTN: elementwise arithmetic on the weights alone) do not.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..sidecar import write_with_sidecar
from . import weight_only
from .job import GraphJob

BLOCK_SIZE = 32  # chosen by bench/int4_blocks.py (quality and decode speed per block size)
QMIN, QMAX = -8, 7
OPSET = 21  # int4 and blocked DequantizeLinear
SUFFIX = "_int4"
DAMP = 0.01  # GPTQ's dampening: 1 % of the Hessian's mean diagonal, the paper's default
LLM_GRAPHS = ("prompt_encode", "decode_step")
# MatMul nodes kept at 8 bits: the head (measured on the trained fixture, bench/int4_blocks.py: with it at 4
# bits the held-out WER vs PyTorch was 1.5-1.75 %, at 8 bits 0.25-0.5 %; the encoder at FP32 or int8w made
# no difference).
EIGHT_BIT: tuple[str, ...] = ("/lm_head/MatMul",)
# Embedding rows at 8 bits (int8 per row) until bench/int4_blocks.py --table-bits 4 says otherwise.
TABLE_BITS = 8
GRAM_ROWS = 16  # rows per elementwise outer-product chunk in gram(): memory is GRAM_ROWS * K * K doubles


# --- the formula -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A block's 16 levels: ``(q - zero_point) * scale``. Symmetric: int4 q in [-8, 7], zero point 0,
    ``scale = max|W| / 7``. Asymmetric: uint4 q in [0, 15], ``scale = (max - min) / 15`` and the zero point
    ``rint(-min / scale)``, so a block whose values lean to one side uses all 16 levels."""

    scale: np.ndarray  # float32 [blocks, N]
    zero_point: np.ndarray | None  # uint8 [blocks, N] (stored as uint4) or None (symmetric)

    @property
    def bounds(self) -> tuple[int, int]:
        return (QMIN, QMAX) if self.zero_point is None else (0, 15)


def block_grid(weight: np.ndarray, block: int, symmetric: bool = True) -> Grid:
    """The grid of every block of ``block`` input rows of ``weight`` [K, N] (a block of zeros: scale 1)."""
    k, n = weight.shape
    blocks = weight.reshape(k // block, block, n)
    if symmetric:
        peak = np.max(np.abs(blocks), axis=1)
        return Grid(np.where(peak > 0, peak / QMAX, 1.0).astype(np.float32), None)
    low = np.minimum(np.min(blocks, axis=1), 0.0)
    high = np.maximum(np.max(blocks, axis=1), 0.0)
    scale = np.where(high > low, (high - low) / 15.0, 1.0).astype(np.float32)
    zero = np.clip(np.rint(-low / scale.astype(np.float64)), 0, 15).astype(np.uint8)
    return Grid(scale, zero)


def block_scales(weight: np.ndarray, block: int) -> np.ndarray:
    """float32 [K / block, N]: each block's largest magnitude over 7 (the symmetric grid's scales)."""
    return block_grid(weight, block).scale


def _expand(values: np.ndarray, block: int) -> np.ndarray:
    return np.repeat(values, block, axis=0)


def quantise_rows(rows: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None) -> np.ndarray:
    """4-bit values (int8 storage; uint4 ones when ``zero_point`` is given) of ``rows`` under ``scale``
    (broadcast), rounding half to even as QuantizeLinear does."""
    scaled = np.rint(rows / scale.astype(np.float64))
    if zero_point is None:
        return np.clip(scaled, QMIN, QMAX).astype(np.int8)
    return np.clip(scaled + zero_point, 0, 15).astype(np.int8)


def rtn(weight: np.ndarray, block: int = BLOCK_SIZE, symmetric: bool = True) -> tuple[np.ndarray, Grid]:
    """Round to nearest: 4-bit values [K, N] (int8 storage) and the blocks' grid."""
    w = np.asarray(weight, np.float64)
    grid = block_grid(w, block, symmetric)
    zero = None if grid.zero_point is None else _expand(grid.zero_point, block)
    return quantise_rows(w, _expand(grid.scale, block), zero), grid


def dequantise(q: np.ndarray, grid: Grid | np.ndarray, block: int = BLOCK_SIZE) -> np.ndarray:
    """What ``DequantizeLinear(q, scale[, zero_point], axis=0, block_size=block)`` computes (float32)."""
    if not isinstance(grid, Grid):
        grid = Grid(grid, None)
    values = q.astype(np.float32)
    if grid.zero_point is not None:
        values = values - _expand(grid.zero_point, block).astype(np.float32)
    return values * _expand(grid.scale, block)


# --- deterministic linear algebra ---------------------------------------------------------------------


def gram(rows: Iterable[np.ndarray], size: int) -> np.ndarray:
    """``sum_r x_r^T x_r`` over every row of every [n, size] array, in float64, by elementwise outer products
    added in a fixed order (no BLAS: the same bits on every CPU)."""
    total = np.zeros((size, size), np.float64)
    for block in rows:
        x = np.asarray(block, np.float64).reshape(-1, size)
        for start in range(0, len(x), GRAM_ROWS):
            chunk = x[start : start + GRAM_ROWS]
            total += np.sum(chunk[:, :, None] * chunk[:, None, :], axis=0)
    return total


def cholesky(a: np.ndarray) -> np.ndarray:
    """Lower-triangular L with ``a = L L^T`` (``a`` symmetric positive definite), column by column with
    elementwise products and numpy's ordered sums."""
    n = len(a)
    lower = np.zeros_like(a, dtype=np.float64)
    for j in range(n):
        diagonal = a[j, j] - np.sum(lower[j, :j] * lower[j, :j])
        if not diagonal > 0:
            raise np.linalg.LinAlgError(f"not positive definite at {j}")
        lower[j, j] = np.sqrt(diagonal)
        below = a[j + 1 :, j] - np.sum(lower[j + 1 :, :j] * lower[j, :j][None, :], axis=1)
        lower[j + 1 :, j] = below / lower[j, j]
    return lower


def lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular matrix, row by row (forward substitution)."""
    n = len(lower)
    inverse = np.zeros_like(lower)
    for i in range(n):
        inverse[i, i] = 1.0 / lower[i, i]
        if i:
            inverse[i, :i] = -np.sum(lower[i, :i][:, None] * inverse[:i, :i], axis=0) / lower[i, i]
    return inverse


def inverse_cholesky_upper(hessian: np.ndarray) -> np.ndarray:
    """Upper-triangular U with ``H^-1 = U^T U``: GPTQ's form of the inverse Hessian."""
    inverse = gram(lower_inverse(cholesky(hessian)), len(hessian))  # H^-1 = L^-T L^-1
    return cholesky(inverse).T


# --- GPTQ ----------------------------------------------------------------------------------------------


def gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    block: int = BLOCK_SIZE,
    damp: float = DAMP,
    symmetric: bool = True,
) -> tuple[np.ndarray, Grid]:
    """GPTQ of ``weight`` [K, N] (``y = x @ weight``) for inputs whose ``x^T x`` is ``hessian`` [K, K].

    Input rows are quantised in order; each row's scale block is fixed when the block starts (from the
    rows as updated so far), and each row's error ``(w - q s) / U[i, i]`` is subtracted from the later rows
    times ``U[i, i+1:]``. Inputs that are never active (zero diagonal) get weight 0 first, as the paper does.
    With a diagonal Hessian nothing moves and the result is RTN's.
    """
    w = np.array(weight, np.float64)
    k, n = w.shape
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.arange(k), np.arange(k)] += damp * np.mean(np.diag(h))
    upper = inverse_cholesky_upper(h)
    q = np.zeros((k, n), np.int8)
    scale = np.zeros((k // block, n), np.float32)
    zero = None if symmetric else np.zeros((k // block, n), np.uint8)
    for i in range(k):
        b = i // block
        if i % block == 0:
            grid = block_grid(w[i : i + block], block, symmetric)
            scale[b] = grid.scale[0]
            if zero is not None:
                zero[b] = grid.zero_point[0]
        s = scale[b].astype(np.float64)
        q[i] = quantise_rows(w[i], scale[b], None if zero is None else zero[b])
        level = q[i].astype(np.float64) - (0.0 if zero is None else zero[b].astype(np.float64))
        error = (w[i] - level * s) / upper[i, i]
        w[i + 1 :] -= upper[i, i + 1 :, None] * error[None, :]
    return q, Grid(scale, zero)


def output_error(
    x_gram: np.ndarray, weight: np.ndarray, q: np.ndarray, scale: np.ndarray, block: int
) -> float:
    """``||X (W - dq)||_F^2 = sum(delta * (X^T X) delta)`` from X's gram matrix: what GPTQ minimises
    (reported per weight), with the same ordered elementwise sums as :func:`gram`."""
    delta = np.asarray(weight, np.float64) - dequantise(q, scale, block).astype(np.float64)
    total = 0.0
    for start in range(0, len(x_gram), GRAM_ROWS):
        rows = x_gram[start : start + GRAM_ROWS]
        product = np.sum(rows[:, :, None] * delta[None, :, :], axis=1)  # (X^T X delta)[rows]
        total += float(np.sum(delta[start : start + GRAM_ROWS] * product))
    return total


# --- the graph -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int4Weight:
    """One quantised MatMul weight: its relative output error on the calibration inputs (GPTQ) or its
    worst relative rounding error (RTN), for the report's sensitive-layer list."""

    name: str
    node: str
    shape: tuple[int, int]
    relative_error: float


def matmul_targets(model: onnx.ModelProto, excluded: set[str], block: int) -> dict[str, onnx.NodeProto]:
    """Weight initializer -> the one MatMul that reads it as its 2-D FP32 right-hand input, with K a
    multiple of ``block``; a weight read by any other node (or an excluded one) stays FP32."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: Counter[str] = Counter(name for node in model.graph.node for name in node.input if name in inits)
    targets = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name in excluded or len(node.input) != 2:
            continue
        init = inits.get(node.input[1])
        if (
            init is not None
            and readers[init.name] == 1
            and init.data_type == onnx.TensorProto.FLOAT
            and len(init.dims) == 2
            and init.dims[0] % block == 0
        ):
            targets[init.name] = node
    outputs = {o.name for o in model.graph.output}
    return {name: node for name, node in targets.items() if name not in outputs}


def activation_grams(
    src: Path, targets: dict[str, onnx.NodeProto], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Gram matrix ``X^T X`` of each target MatMul's input over ``feeds``, by the FP32 graph itself (its
    inputs added as outputs), keyed by the MatMul's node name (q, k and v share one input)."""
    import onnxruntime as ort

    model = onnx.load(str(src), load_external_data=False)
    inputs = sorted({node.input[0] for node in targets.values()})
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_empty_tensor_value_info(name) for name in inputs if name not in known
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(src.parent))
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    by_input: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(inputs, session.run(inputs, feed), strict=True):
            size = value.shape[-1]
            by_input[name] = by_input.get(name, np.zeros((size, size))) + gram([value], size)
    return {node.name: by_input[node.input[0]] for node in targets.values()}


def pooled_grams(job: GraphJob, block: int) -> dict[str, np.ndarray]:
    """The grams of both LLM graphs' calibration inputs, summed per MatMul (the two graphs hold the same
    weights under the same node names): prompt_encode sees every prompt position, decode_step the generated
    ones, and both graphs then get the same quantised weights, as RTN gives them. The tier's two LLM jobs
    share one calibration set, so the second reuses the first's sums (one slot: the last set only)."""
    key = (str(job.src.parent), block, tuple(sorted(job.excluded)))
    if _POOLED and _POOLED[0] == key and _POOLED[1] is job.calibration:
        return _POOLED[2]
    total: dict[str, np.ndarray] = {}
    for name in LLM_GRAPHS:
        src = job.src.parent / f"{name}.onnx"
        if job.calibration is None or name not in job.calibration.feeds or not src.is_file():
            continue
        model = onnx.load(str(src), load_external_data=False)
        targets = matmul_targets(model, set(job.excluded), block)
        for node, g in activation_grams(src, targets, job.calibration.feeds[name]).items():
            total[node] = total[node] + g if node in total else g
    _POOLED[:] = [key, job.calibration, total]
    return total


_POOLED: list = []  # [key, calibration set, grams] of the last pooled_grams call


def table_rows4(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """An embedding table [V, H] at 4 bits per value for :func:`gather_rows4`: symmetric int4 levels in blocks
    of ``block`` along each row (``scale = max|block| / 7``), stored as bytes [V, H / 2] holding ``q + 8``,
    the even column in the low nibble; and the float32 scales [V, H / block]."""
    rows, width = table.shape
    q, grid = rtn(table.T.astype(np.float64), block)  # RTN blocks run along axis 0: the table's rows
    levels = (q.T.astype(np.int16) + 8).astype(np.uint8)  # [V, H] in 0..15
    packed = levels[:, 0::2] | (levels[:, 1::2] << 4)
    return packed.astype(np.uint8), np.ascontiguousarray(grid.scale.T, dtype=np.float32)


def unpack_rows4(packed: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """What :func:`gather_rows4`'s nodes compute for the gathered rows (numpy, for the tests)."""
    levels = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    values = levels.astype(np.float32) - 8
    blocks = values.reshape(*values.shape[:-1], -1, block) * scale[..., None]
    return blocks.reshape(values.shape)


def gather_rows4(node: onnx.NodeProto, block: int) -> list[onnx.NodeProto]:
    """The nodes replacing ``Gather(table, ids)`` once ``table`` is packed by :func:`table_rows4`: gather the
    bytes and the scales of the rows asked for, split each byte into its two levels (``BitwiseAnd``,
    ``BitShift``), and scale them. Only the rows read are unpacked; every op is ai.onnx (opset 18 or less)."""
    table, ids = node.input[0], node.input[1]
    b = f"/int4w/{node.name or table}/"
    t = table + SUFFIX
    return [
        helper.make_node("Gather", [t, ids], [b + "bytes"], axis=0, name=b + "GatherRows"),
        helper.make_node("BitwiseAnd", [b + "bytes", ROW_CONSTS["low"]], [b + "low"], name=b + "Low"),
        helper.make_node(
            "BitShift", [b + "bytes", ROW_CONSTS["shift"]], [b + "high"], direction="RIGHT", name=b + "High"
        ),
        helper.make_node("Unsqueeze", [b + "low", ROW_CONSTS["last"]], [b + "low1"], name=b + "Unsqueeze0"),
        helper.make_node("Unsqueeze", [b + "high", ROW_CONSTS["last"]], [b + "high1"], name=b + "Unsqueeze1"),
        helper.make_node("Concat", [b + "low1", b + "high1"], [b + "pairs"], axis=-1, name=b + "Pairs"),
        helper.make_node("Cast", [b + "pairs"], [b + "pairs_f"], to=onnx.TensorProto.FLOAT, name=b + "Cast"),
        helper.make_node("Sub", [b + "pairs_f", ROW_CONSTS["eight"]], [b + "levels"], name=b + "Centre"),
        helper.make_node("Shape", [ids], [b + "ids_shape"], name=b + "IdsShape"),
        helper.make_node(
            "Concat",
            [b + "ids_shape", ROW_CONSTS["blocks"]],
            [b + "block_shape"],
            axis=0,
            name=b + "BlockShape",
        ),
        helper.make_node("Reshape", [b + "levels", b + "block_shape"], [b + "blocked"], name=b + "Blocks"),
        helper.make_node("Gather", [t + "_scale", ids], [b + "scales"], axis=0, name=b + "GatherScales"),
        helper.make_node(
            "Unsqueeze", [b + "scales", ROW_CONSTS["last"]], [b + "scales1"], name=b + "Unsqueeze2"
        ),
        helper.make_node("Mul", [b + "blocked", b + "scales1"], [b + "scaled"], name=b + "Scale"),
        helper.make_node(
            "Concat", [b + "ids_shape", ROW_CONSTS["row"]], [b + "row_shape"], axis=0, name=b + "RowShape"
        ),
        helper.make_node("Reshape", [b + "scaled", b + "row_shape"], list(node.output), name=b + "Rows"),
    ]


ROW_CONSTS = {k: f"int4w_rows_{k}" for k in ("low", "shift", "last", "eight", "blocks", "row")}


def row_constants(block: int, width: int) -> list[onnx.TensorProto]:
    """The constants :func:`gather_rows4` reads, for tables of ``width`` columns."""
    return [
        numpy_helper.from_array(np.array(15, np.uint8), ROW_CONSTS["low"]),
        numpy_helper.from_array(np.array(4, np.uint8), ROW_CONSTS["shift"]),
        numpy_helper.from_array(np.array([-1], np.int64), ROW_CONSTS["last"]),
        numpy_helper.from_array(np.array(8, np.float32), ROW_CONSTS["eight"]),
        numpy_helper.from_array(np.array([-1, block], np.int64), ROW_CONSTS["blocks"]),
        numpy_helper.from_array(np.array([width], np.int64), ROW_CONSTS["row"]),
    ]


def quantise_model(
    model: onnx.ModelProto,
    base: Path,
    excluded: set[str],
    block: int = BLOCK_SIZE,
    grams: dict[str, np.ndarray] | None = None,
    symmetric: bool = True,
    eight_bit: tuple[str, ...] = (),
    table_bits: int = 8,
) -> tuple[dict[str, int], list[Int4Weight]]:
    """Rewrite an LLM graph (loaded without its weights; they live under ``base``) in place: 4-bit MatMul
    weights (GPTQ when ``grams`` is given, else RTN), 8-bit ones for the MatMuls named by ``eight_bit``
    (shell patterns of node names), the embedding rows at ``table_bits`` (8: int8 per row, 4:
    :func:`table_rows4`), opset 21."""
    eight = {
        node.input[1]
        for node in model.graph.node
        if node.op_type == "MatMul" and any(fnmatch.fnmatchcase(node.name, p) for p in eight_bit)
    }
    targets = {w: n for w, n in matmul_targets(model, excluded, block).items() if w not in eight}
    tables = {  # 8-bit, one scale per row of a table (axis 0) or per output column of a MatMul (axis 1)
        n: a
        for n, a in weight_only._targets(model, excluded).items()
        if n not in targets and (a == 0 or n in eight)
    }
    graph = model.graph
    keep, new_inits, records = [], [], []
    asymmetric: set[str] = set()
    widths: set[int] = set()  # the widths of tables packed at 4 bits
    for init in graph.initializer:
        if init.name in targets:
            weight = numpy_helper.to_array(init, str(base)).astype(np.float64)
            node = targets[init.name]
            if grams is not None:
                x_gram = grams[node.name]
                q, grid = gptq(weight, x_gram, block, symmetric=symmetric)
                reference = output_error(x_gram, weight, np.zeros_like(q), np.ones_like(grid.scale), block)
                error = output_error(x_gram, weight, q, grid, block) / (reference or 1.0)
            else:
                q, grid = rtn(weight, block, symmetric)
                worst = float(np.max(np.abs(weight - dequantise(q, grid, block))))
                error = worst / (float(np.max(np.abs(weight))) or 1.0)
            records.append(Int4Weight(init.name, node.name, tuple(weight.shape), float(f"{error:.4g}")))
            storage = ml_dtypes.int4 if grid.zero_point is None else ml_dtypes.uint4
            new_inits += [
                numpy_helper.from_array(q.astype(storage), init.name + SUFFIX),
                numpy_helper.from_array(grid.scale, init.name + SUFFIX + "_scale"),
            ]
            if grid.zero_point is not None:
                zero = grid.zero_point.astype(ml_dtypes.uint4)
                new_inits.append(numpy_helper.from_array(zero, init.name + SUFFIX + "_zero_point"))
                asymmetric.add(init.name)
        elif init.name in tables and tables[init.name] == 0 and table_bits == 4:
            table = numpy_helper.to_array(init, str(base))
            packed, scale4 = table_rows4(table, block)
            new_inits += [
                numpy_helper.from_array(packed, init.name + SUFFIX),
                numpy_helper.from_array(scale4, init.name + SUFFIX + "_scale"),
            ]
            widths.add(table.shape[1])
        elif init.name in tables:
            table = numpy_helper.to_array(init, str(base))
            q8, scale8 = weight_only.quantise_weight(table, tables[init.name])
            if tables[init.name] == 0:
                new_inits += weight_only.int8_table_initializers(init.name, q8, scale8)
            else:
                new_inits += weight_only.int8_initializers(init.name, q8, scale8)
        else:
            keep.append(init)
    dq = [
        helper.make_node(
            "DequantizeLinear",
            [name + SUFFIX, name + SUFFIX + "_scale"]
            + ([name + SUFFIX + "_zero_point"] if name in asymmetric else []),
            [name + "_dequantized"],
            axis=0,
            block_size=block,
            name=f"/int4w/DequantizeLinear_{name}",
        )
        for name in targets
    ]
    rows = {name for name, axis in tables.items() if axis == 0}  # embedding tables: gathered, then scaled
    dq += [
        weight_only.dequantize_node(name, axis, "int4w") for name, axis in tables.items() if name not in rows
    ]
    counts: Counter[str] = Counter()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in targets or name in tables:
                if name not in rows:
                    node.input[i] = name + "_dequantized"
                counts[node.op_type] += 1
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if table_bits == 4 and rows:
        if len(widths) != 1:
            raise ValueError(
                f"4-bit tables of several widths {sorted(widths)}: one set of row constants only"
            )
        weight_only.replace_table_gathers(
            graph, rows, "int4w", lambda node: gather_rows4(node, block), row_constants(block, widths.pop())
        )
    else:
        weight_only.replace_table_gathers(graph, rows, "int4w")
    for node in reversed(dq):
        graph.node.insert(0, node)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
    return dict(sorted(counts.items())), records


def sensitive(records: list[Int4Weight], top: int = 5) -> list[dict]:
    """The weights that moved most (relative error), the first to keep at higher precision."""
    ranked = sorted(records, key=lambda r: -r.relative_error)[:top]
    return [{"node": r.node, "shape": list(r.shape), "relative_error": r.relative_error} for r in ranked]


def writer(
    method: str,
    block: int = BLOCK_SIZE,
    symmetric: bool = True,
    eight_bit: tuple[str, ...] = EIGHT_BIT,
    table_bits: int = TABLE_BITS,
    encoder_bits: int = 8,
):
    """The tier's writer for ``method`` ("gptq" or "rtn"): LLM graphs to 4 bits (``eight_bit`` MatMuls to
    8, embedding rows to ``table_bits``), the encoder to int8w (``encoder_bits`` 4: to 4 bits by RTN, as
    measured in bench/int4_blocks.py and not chosen)."""

    def write_graph(job: GraphJob) -> tuple[dict, dict]:
        if job.graph not in LLM_GRAPHS and encoder_bits == 4:
            model = onnx.load(str(job.src), load_external_data=False)
            counts, records = quantise_model(model, job.src.parent, set(job.excluded), block)
            write_with_sidecar(model, job.src.parent, job.dst)
            return counts, {"precision": f"int4 RTN in blocks of {block}", "weights": len(records)}
        if job.graph not in LLM_GRAPHS:
            counts, details = weight_only.write_graph(job)
            return counts, {
                **details,
                "precision": "int8w (8-bit per channel): the encoder stays above 4 bits",
            }
        model = onnx.load(str(job.src), load_external_data=False)
        grams = pooled_grams(job, block) if method == "gptq" else None
        counts, records = quantise_model(
            model, job.src.parent, set(job.excluded), block, grams, symmetric, eight_bit, table_bits
        )
        write_with_sidecar(model, job.src.parent, job.dst)
        error = (
            "relative output error ||X (W - dq)||^2 / ||X W||^2 on the calibration inputs"
            if grams
            else ("worst relative rounding error max|W - dq| / max|W|")
        )
        details = {
            "formula": f"int4 q = clip(rint(W / s), -8, 7), s = max|W| per block of {block} input rows / 7, "
            f"DequantizeLinear(axis 0, block_size {block}) -> MatMul; embedding rows "
            + (f"int4 in blocks of {block}, gathered then unpacked" if table_bits == 4 else "int8, gathered"),
            "method": "GPTQ (damp 0.01, blocks fixed in order)" if grams else "round to nearest",
            "block_size": block,
            "opset": OPSET,
            "weights": len(records),
            "eight_bit": list(eight_bit),
            "table_bits": table_bits,
            "error_measure": error,
            "sensitive_layers": sensitive(records),
        }
        return counts, details

    return write_graph
