"""Can a quantised graph's integer products saturate on some CPU? Proved from its stored weights.

On x86 without VNNI, onnxruntime's u8 x s8 kernel forms ``a0 * w0 + a1 * w1`` in a saturating int16
(``vpmaddubsw``; see :mod:`.cpu`) before it widens to int32. Activations are uint8, any of 0..255, so a
product pair stays exact on every CPU exactly when ``255 * (|w0| + |w1|) <= 32,767`` for the two weights
that share it. Which two share a pair depends on the kernel's packing, so the proof here takes the worst
case: the two largest magnitudes of each output channel (|w| <= 64 everywhere is enough). A graph that
passes computes the same integer sums on AVX2, AVX-512, VNNI, AMX and ARM; one that fails may not.

:func:`emulate_site` is the other half: a numpy model of that saturating kernel, run on a site's real
weights and the activations a clip gives it, to measure what an AVX2 machine would compute.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..sidecar import external_files

INT16_MAX = 32767
UINT8_MAX = 255
SAFE_PAIR = INT16_MAX // UINT8_MAX  # 128: the largest |w0| + |w1| that can never saturate


@dataclass(frozen=True)
class Site:
    """One integer GEMM onnxruntime will run: a uint8 activation times an 8-bit weight."""

    node: str
    op_type: str  # MatMulInteger, ConvInteger, or the MatMul / Conv / Gemm a QDQ pair feeds
    weight: str  # the 8-bit initializer
    activation: str  # the uint8 tensor multiplied by it
    signed: bool  # int8 weight (u8 x s8 kernel) or uint8 (u8 x u8, exact on every CPU)


@dataclass(frozen=True)
class SiteBound:
    site: Site
    max_abs_weight: int
    worst_pair: int  # largest |w0| + |w1| within one output channel (0 for uint8 weights)

    @property
    def can_saturate(self) -> bool:
        return self.site.signed and self.worst_pair > SAFE_PAIR


@dataclass(frozen=True)
class SaturationProof:
    """The verdict for one graph file: every integer site and its worst weight pair."""

    graph: str
    sites: tuple[SiteBound, ...]

    @property
    def unsafe(self) -> tuple[SiteBound, ...]:
        return tuple(s for s in self.sites if s.can_saturate)

    @property
    def can_saturate(self) -> bool:
        return bool(self.unsafe)

    def summary(self) -> dict:
        worst = max((s.worst_pair for s in self.sites if s.site.signed), default=0)
        return {
            "graph": self.graph,
            "integer_sites": len(self.sites),
            "sites_that_can_saturate": len(self.unsafe),
            "worst_weight_pair": worst,
            "safe_pair_limit": SAFE_PAIR,
            "max_abs_weight": max((s.max_abs_weight for s in self.sites), default=0),
        }


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def integer_sites(model: onnx.ModelProto) -> list[Site]:
    """Every product of an 8-bit activation and a stored 8-bit weight in ``model``'s main graph.

    Dynamic graphs name them (``MatMulInteger``, ``ConvInteger``); QDQ graphs say it with a
    DequantizeLinear of a weight and one of an 8-bit QuantizeLinear in front of a MatMul, Conv or Gemm,
    which onnxruntime fuses into the same integer kernels at load. An int8 activation counts like a uint8
    one: on x86, MLAS flips its sign bit (a + 128, 0..255) and runs the u8 x s8 kernel (measured: a QDQ
    tier with symmetric int8 activations and full-range weights errs as much on AVX2 as the published one)."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = _producers(graph)
    eight_bit = {onnx.TensorProto.INT8: True, onnx.TensorProto.UINT8: False}

    def dq_source(name: str, want_init: bool) -> str | None:
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        src = node.input[0]
        if want_init:
            return src if src in inits and inits[src].data_type in eight_bit else None
        q = producer.get(src)
        if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 3:
            return None
        zp = inits.get(q.input[2])
        return src if zp is not None and zp.data_type in eight_bit else None

    sites = []
    for node in graph.node:
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            w = node.input[1]
            if w in inits and inits[w].data_type in eight_bit:
                sites.append(Site(node.name, node.op_type, w, node.input[0], eight_bit[inits[w].data_type]))
        elif node.op_type in ("MatMul", "Conv", "Gemm") and len(node.input) >= 2:
            w, a = dq_source(node.input[1], True), dq_source(node.input[0], False)
            if w is not None and a is not None:
                sites.append(Site(node.name, node.op_type, w, a, eight_bit[inits[w].data_type]))
    return sites


def channel_axis(site: Site, weight: np.ndarray) -> int:
    """The axis of ``weight`` that indexes output channels (every other axis is summed over)."""
    return 0 if site.op_type in ("Conv", "ConvInteger") else weight.ndim - 1


def worst_pair(weight: np.ndarray, axis: int) -> int:
    """The largest |w0| + |w1| over two different weights of one output channel."""
    mags = np.moveaxis(np.abs(weight.astype(np.int32)), axis, 0).reshape(weight.shape[axis], -1)
    if mags.shape[1] < 2:
        return int(mags.max(initial=0))
    top2 = np.partition(mags, mags.shape[1] - 2, axis=1)[:, -2:]
    return int(top2.sum(axis=1).max(initial=0))


def prove(path: Path) -> SaturationProof:
    """The saturation verdict of the graph at ``path`` (its weights are read from its sidecar)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    sites = integer_sites(model)
    inits = {i.name: i for i in model.graph.initializer}
    bounds = []
    for site in sites:
        tensor = inits[site.weight]
        weight = numpy_helper.to_array(tensor, base_dir=str(path.parent))
        if site.signed:
            pair = worst_pair(weight, channel_axis(site, weight))
            bounds.append(SiteBound(site, int(np.abs(weight.astype(np.int32)).max(initial=0)), pair))
        else:
            bounds.append(SiteBound(site, int(weight.max(initial=0)), 0))
    return SaturationProof(path.name, tuple(bounds))


def prove_files(paths: Iterable[Path]) -> list[SaturationProof]:
    return [prove(p) for p in paths]


# --- the saturating kernel, emulated ---------------------------------------------------------------------


def saturating_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` (uint8 [M, K] by int8 [K, N]) as AVX2's ``vpmaddubsw`` + ``vpmaddwd`` compute it: each
    pair of neighbouring products along K summed and clipped to int16, then the pairs summed in int32."""
    a = a.astype(np.int32)
    w = w.astype(np.int32)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
        w = np.pad(w, ((0, 1), (0, 0)))
    out = np.zeros((a.shape[0], w.shape[1]), np.int64)
    for k in range(0, a.shape[1], 2):
        pair = np.outer(a[:, k], w[k]) + np.outer(a[:, k + 1], w[k + 1])
        out += np.clip(pair, -INT16_MAX - 1, INT16_MAX)
    return out.astype(np.int32)


@dataclass(frozen=True)
class EmulatedSite:
    node: str
    outputs: int
    outputs_changed: int  # integer sums that differ from the exact ones
    max_relative_error: float  # max |emulated - exact| / max |exact|

    def to_json(self) -> dict:
        return {
            "node": self.node,
            "outputs": self.outputs,
            "outputs_changed": self.outputs_changed,
            "max_relative_error": self.max_relative_error,
        }


def emulate_site(weight: np.ndarray, activation: np.ndarray) -> tuple[int, int, float]:
    """(outputs, outputs changed, max relative error) of the saturating kernel against the exact sum, for
    a MatMul weight [K, N] and its uint8 activation [..., K]."""
    a = activation.reshape(-1, activation.shape[-1])
    exact = a.astype(np.int64) @ weight.astype(np.int64)
    emulated = saturating_matmul(a, weight).astype(np.int64)
    diff = np.abs(emulated - exact)
    scale = max(int(np.abs(exact).max(initial=0)), 1)
    return int(exact.size), int((diff > 0).sum()), float(diff.max(initial=0) / scale)


def emulate_graph(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[EmulatedSite]:
    """Every signed MatMul site of the graph at ``path``, run on the saturating kernel in numpy with the
    uint8 activations ``feeds`` give it (captured from onnxruntime running the graph as it is).

    Conv sites are left out: their im2col order is the kernel's own, and onnxruntime's ConvInteger on
    AVX2 was measured exact (widened products) in any case. So are int8 activations (this model takes
    uint8 ones, as the dynamic and the default static tiers have)."""
    import onnxruntime as ort

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    sites = [s for s in integer_sites(model) if s.signed and s.op_type in ("MatMulInteger", "MatMul")]
    if not sites:
        return []
    known = {o.name for o in model.graph.output}
    for name in dict.fromkeys(s.activation for s in sites):
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    with tempfile.TemporaryDirectory(prefix="granite-emulate-") as tmp:
        # the widened graph beside copies of the sidecars it reads (the bundle may be read-only, and
        # onnxruntime refuses a sidecar reached through a link out of the graph's folder): a test and
        # bench tool for small bundles
        for data in external_files(path):
            shutil.copyfile(data, Path(tmp) / data.name)
        onnx.save_model(model, str(Path(tmp) / path.name))
        session = ort.InferenceSession(
            str(Path(tmp) / path.name), options, providers=["CPUExecutionProvider"]
        )
    names = [o.name for o in session.get_outputs()]
    inits = {i.name: i for i in model.graph.initializer}
    weights = {s.weight: numpy_helper.to_array(inits[s.weight], base_dir=str(path.parent)) for s in sites}
    totals = {s.node: [0, 0, 0.0] for s in sites}
    for feed in feeds:
        inputs = {i.name: feed[i.name] for i in session.get_inputs()}
        values = dict(zip(names, session.run(None, inputs), strict=True))
        for site in sites:
            if values[site.activation].dtype != np.uint8:  # an int8 activation: not this model's kernel
                continue
            n, changed, rel = emulate_site(weights[site.weight], values[site.activation])
            t = totals[site.node]
            t[0], t[1], t[2] = t[0] + n, t[1] + changed, max(t[2], rel)
    return [EmulatedSite(node, n, c, r) for node, (n, c, r) in totals.items()]


# --- a bundle tier's verdict, and the warning for the CPU at hand ----------------------------------------


def tier_verdict(folder: Path, tier: str | None) -> dict:
    """The proof over every graph ``tier`` runs (FP32 graphs have no integer sites; graphs not in
    ``folder``, as in a staging folder, are skipped), as plain data."""
    from .bundle import resolve_graphs

    if tier is None:
        return {"integer_sites": 0, "sites_that_can_saturate": 0, "can_saturate": False, "graphs": []}
    paths, _missing = resolve_graphs(Path(folder), tier)
    proofs = [prove(p) for p in paths.values() if p.is_file()]
    unsafe = sum(len(p.unsafe) for p in proofs)
    return {
        "integer_sites": sum(len(p.sites) for p in proofs),
        "sites_that_can_saturate": unsafe,
        "can_saturate": unsafe > 0,
        "graphs": [p.summary() for p in proofs],
    }


def saturation_warning(folder: Path, tier: str | None, saturating_cpu: bool) -> str | None:
    """One line for ``verify`` and ``transcribe`` when ``tier`` can compute wrong products on this CPU:
    only when this CPU's kernel saturates *and* the tier's weights can make it do so."""
    if tier is None or not saturating_cpu:
        return None
    verdict = tier_verdict(folder, tier)
    if not verdict["can_saturate"]:
        return None
    unsafe, sites = verdict["sites_that_can_saturate"], verdict["integer_sites"]
    return (
        f"tier {tier}: {unsafe} of its {sites} integer products can saturate on this CPU (onnxruntime's "
        "u8 x s8 kernel adds pairs in int16 here: no VNNI), so its published quality figures do not hold "
        "here; quantise it again as granite-onnx's int8 tier (7-bit weights: exact on every CPU) or use int8w"
    )
