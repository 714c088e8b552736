"""Portability checks on one ONNX file: what any onnxruntime (the Rust ``ort`` crate too) can load.

Torch-free. Each check returns a list of problems (empty = pass) so the export stage, the tests
and the ``verify`` command report the same findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .specs import ALL_GRAPHS, IR_VERSION, OPSET, TIER_OPSETS

INLINE_LIMIT = 1024
# The shared layout (``export --layout shared``): prompt_encode and decode_step point the weights they
# have in common into one ``<stem>.shared.onnx_data`` beside their own sidecars.
SHARED_SUFFIX = ".shared.onnx_data"
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class AuditResult:
    file: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's values (typed fields such as int32_data widen int8 values: count values)."""
    if tensor.raw_data:
        return len(tensor.raw_data)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    count = 1
    for d in tensor.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 8
    return count * itemsize


def allowed_opsets(path: Path | None) -> tuple[int, ...]:
    """ai.onnx 20 everywhere; a file of a tier in TIER_OPSETS or of one of its variants
    (``decode_step_int4w.onnx``, ``decode_step_int4w-rtn.onnx``) may import that tier's opset instead."""
    stem = Path(path).stem if path is not None else ""
    for graph in ALL_GRAPHS:
        tier = stem[len(graph) + 1 :] if stem.startswith(f"{graph}_") else ""
        for family, opset in TIER_OPSETS.items():
            if tier == family or tier.startswith(f"{family}-"):
                return (OPSET, opset)
    return (OPSET,)


def check_header(model: onnx.ModelProto, path: Path | None = None) -> list[str]:
    problems = []
    if model.ir_version != IR_VERSION:
        problems.append(f"IR version {model.ir_version}, expected {IR_VERSION}")
    imports = {(o.domain, o.version) for o in model.opset_import}
    allowed = allowed_opsets(path)
    if not any(imports in ({("", v)}, {("ai.onnx", v)}) for v in allowed):
        wanted = " or ".join(str(v) for v in allowed)
        problems.append(f"opset_import {sorted(imports)}, expected only ai.onnx {wanted}")
    foreign = sorted({n.domain for n in _all_nodes(model.graph) if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        problems.append(f"nodes from non-default domains {foreign}")
    return problems


def check_external_data(model: onnx.ModelProto, path: Path) -> list[str]:
    """One own sidecar, named ``<graph>.onnx_data``, present (plus, in the shared layout, one
    ``*.shared.onnx_data`` file beside it); nothing over 1 KiB inline."""
    problems = []
    expected = Path(path).stem + ".onnx_data"
    locations = set()
    for init in model.graph.initializer:
        if uses_external_data(init):
            locations.add(ExternalDataInfo(init).location)
        elif _tensor_bytes(init) > INLINE_LIMIT:
            problems.append(f"initializer {init.name} ({_tensor_bytes(init)} bytes) is stored inline")
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and _tensor_bytes(attr.t) > INLINE_LIMIT:
                problems.append(f"node {node.name} holds a {_tensor_bytes(attr.t)}-byte tensor inline")
    others = locations - {expected}
    shared = {loc for loc in others if loc.endswith(SHARED_SUFFIX) and "/" not in loc and "\\" not in loc}
    if others - shared or len(shared) > 1:
        problems.append(
            f"external data in {sorted(locations)}, expected one sidecar {expected}"
            f" (and at most one *{SHARED_SUFFIX} beside it)"
        )
    for name in sorted({expected} | shared):
        if not (Path(path).parent / name).is_file():
            problems.append(f"sidecar {name} is missing")
    return problems


def audit_file(path: Path) -> AuditResult:
    """Header, external-data layout and ``onnx.checker`` full check of one graph file."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        return AuditResult(path.name, (f"not a readable ONNX file: {str(exc).splitlines()[0][:200]}",))
    problems = check_header(model, path) + check_external_data(model, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        problems.append(f"onnx.checker: {str(exc).splitlines()[0][:200]}")
    return AuditResult(path.name, tuple(problems))


def _has_fp16_weights(path: Path) -> bool:
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - an unreadable file is reported by audit_file
        return False
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


def check_loads(path: Path) -> list[str]:
    """The graph opens in onnxruntime with basic and with all graph optimisations.

    A graph with FP16 weights (the fp16 tier) is opened without constant folding. onnxruntime's CPU provider
    has no FP16 MatMul here, so it puts Casts before those nodes and folds every FP16 weight into an FP32
    copy: loading the full-size fp16 encoder took 2.47 GiB, 1.4x its FP32 source, and made the tier's
    quantise peak 1.65x its input. Without folding, the check still assigns every kernel, inserts the
    same Casts and runs the other optimisers. The runtime itself loads the tier with folding, in parity.
    """
    import onnxruntime as ort

    problems = []
    fp16 = _has_fp16_weights(path)
    for label, level in (
        ("ORT_ENABLE_BASIC", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("ORT_ENABLE_ALL", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        options.add_session_config_entry(
            "session.disable_prepacking", "1"
        )  # load check only: no weight copies
        if fp16:
            options.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
        try:
            ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            problems.append(f"onnxruntime {label} refuses it: {str(exc).strip().splitlines()[0][:200]}")
    return problems


def _io(model: onnx.ModelProto, values: str) -> dict[str, tuple]:
    out = {}
    for v in getattr(model.graph, values):
        t = v.type.tensor_type
        out[v.name] = (t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim))
    return out


def check_kv_agreement(prompt_path: Path, decode_path: Path) -> list[str]:
    """prompt_encode's presents feed decode_step's pasts: same layers, dtypes, heads and head size."""
    models = {}
    for path in (prompt_path, decode_path):
        try:
            models[path] = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # a corrupt file: audit_file reports it too; a finding, not a crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return [f"{Path(path).name} is not a readable ONNX file: {first}"]
    prompt = _io(models[prompt_path], "output")
    decode_in = _io(models[decode_path], "input")
    decode_out = _io(models[decode_path], "output")
    problems = []
    presents = sorted(n for n in prompt if n.startswith("present."))
    pasts = sorted(n for n in decode_in if n.startswith("past_key_values."))
    if [n.replace("present.", "", 1) for n in presents] != [
        n.replace("past_key_values.", "", 1) for n in pasts
    ]:
        problems.append(
            f"prompt_encode has {len(presents)} presents, decode_step {len(pasts)} pasts with other names"
        )
    for name in presents:
        past = "past_key_values." + name[len("present.") :]
        for other, where in ((decode_in.get(past), past), (decode_out.get(name), f"decode_step {name}")):
            if other is None:
                continue
            (dtype_a, shape_a), (dtype_b, shape_b) = prompt[name], other
            if len(shape_a) != 4 or len(shape_b) != 4:
                problems.append(
                    f"{name} {prompt[name]} or {where} {other} is not [batch, heads, seq, head_dim]"
                )
            elif dtype_a != dtype_b or shape_a[1] != shape_b[1] or shape_a[3] != shape_b[3]:
                problems.append(f"{name} {prompt[name]} does not match {where} {other}")
    return problems
