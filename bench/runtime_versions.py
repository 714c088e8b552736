"""Benchmark: the oldest onnxruntime release that runs each quantised tier correctly, and the oldest that
runs it fast (its quantised MatMuls fused into integer / n-bit kernels), over real wheels from PyPI.

Why: a bundle's metadata and model card tell users which onnxruntime each tier needs. A tier graph that
loads on an old release may still compute something else (a kernel bug, an op version it silently
mis-handles), and one that computes the right numbers may still run as FP32 MatMuls on dequantised
weights, slower than FP32 itself. This measures both, per tier and release, instead of guessing.

For every release a cached venv holds only ``onnxruntime==V`` and numpy (never torch); this file runs in
it as a torch-free worker (``--worker``: numpy and onnxruntime only). The main process (the pinned
onnxruntime of the project venv) builds one set of deterministic feeds per graph from the shapes stored
in the ONNX files, and the reference outputs of every graph file under the pinned release. Per release
and graph file, the worker then:

- opens an InferenceSession (CPU, ORT_ENABLE_ALL, 2 intra-op threads); a failure is a result (its first
  line is kept), not a crash;
- runs the feeds: ``correct`` when every output is within 1e-3 * (1 + max |reference|) of the pinned
  release's output of the same file, and ``logits`` has the same argmax on its last axis (the bundle was
  validated under the pinned release); ``matches_unoptimised`` is the same test against the pinned
  release with ORT_DISABLE_ALL, the graph's own arithmetic, which a fusion may change (MatMulNBits at
  accuracy_level 4 quantises the activations of a weight-only tier to int8);
- writes the optimised model (``optimized_model_filepath``), whose op types the main process counts:
  a weight-only tier (int8w, int4w) is ``fused`` when no DequantizeLinear feeds a MatMul any more and an
  n-bit / integer MatMul took its place, dynamic int8 when DynamicQuantizeMatMul or MatMulIntegerToFloat
  appears, static QDQ int8 when no DequantizeLinear -> MatMul pair is left; fp16 is fused when it runs;
- times it: median of 10 runs after 2 warm-ups, all files of one graph (FP32 and every tier) taking turns
  run by run so the machine's drift hits them alike, and the ratio to the same release's FP32 graph
  (all of one graph's sessions are open at once: sized for the tiny and trained bundles).

A tier ``runs`` on a release when its own files and the FP32 graphs it shares (frontend, and those its
``quantise_<tier>.json`` lists under ``fp32_graphs``) all load and are correct; ``fused`` when it runs and
its own graphs are fused; ``fuses`` when they load and are fused, whatever the numbers. The summary's
``oldest_correct`` / ``oldest_fused`` / ``oldest_fusing`` is the oldest release from which every newer
tested release also runs / is fused / fuses ("none" when the newest does not).

    python bench/runtime_versions.py --bundle out/tiny --bundle out/trained
    python bench/runtime_versions.py --bundle out/tiny --versions 1.20.1,1.31.1 --out /tmp/rv.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VERSIONS = (
    "1.17.3,1.18.1,1.19.2,1.20.1,1.21.1,1.22.1,1.23.2,1.24.4,1.25.1,1.26.0,1.27.0,1.28.0,1.29.0,1.30.0,1.31.1"
)
OLDEST_MINOR, NEWEST_MINOR = 17, 31
FRONTEND = "frontend"
FP32 = "fp32"

# Symbolic dims of the stored graphs -> the size fed. prompt_encode's sequence holds the audio embeddings
# (one audio token each) and TEXT_TOKENS text tokens; decode_step continues a cache of PAST positions.
AUDIO_TOKENS, TEXT_TOKENS, PAST = 30, 10, 9
DIMS = {
    "batch": 1,
    "frames": 430,
    "samples": 16000,
    "audio_tokens": AUDIO_TOKENS,
    "seq": AUDIO_TOKENS + TEXT_TOKENS,
    "past": PAST,
    "total": PAST + 1,
}
UNKNOWN_DIM = 8

TOLERANCE = 1e-3
TRACKED_OPS = (
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulInteger",
    "DequantizeLinear",
    "MatMul",
    "QLinearMatMul",
    "FusedMatMul",
)
FUSED_OPS = ("MatMulNBits", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul")
MATMUL_OPS = ("MatMul", "FusedMatMul", "Gemm")
NBITS_ATTRS = ("bits", "block_size", "accuracy_level")  # accuracy_level 4: activations quantised to int8
WORKER_TIMEOUT_S = 3600
INLINE_JSON = 700  # the results file: objects up to this many characters on one line
SETTLE_S = 0.01  # before each timed run: the previous session's spinning intra-op workers go idle


def first_line(text: object, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else ""


def ort_message(exc: object, folder: str = "") -> str:
    """The first line of an onnxruntime error without its path, source location and C++ signature."""
    text = first_line(str(exc).replace(folder + "/", "") if folder else exc, limit=100_000)
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ", r"\1: ", text)
    text = re.sub(r"Load model from \S+ failed:", "load failed: ", text)
    where = re.search(r"/onnxruntime_src/\S+:\d+ ", text)
    if where:
        rest, depth, cut = text[where.end() :], 0, 0
        if re.match(r"[\w:~<>]+\(", rest):  # a C++ signature follows: skip to its closing parenthesis
            for i, ch in enumerate(rest):
                depth += (ch == "(") - (ch == ")")
                if ch == ")" and depth == 0:
                    cut = i + 1
                    break
        text = text[: where.start()] + rest[cut:].lstrip(" :")
    return text[:240]


# --- the worker: runs in each release's venv, numpy and onnxruntime only ------------------------------


def session_options(
    ort: Any, threads: int, optimised_path: str | None = None, level: str = "ORT_ENABLE_ALL"
) -> Any:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimised_path:
        opts.optimized_model_filepath = optimised_path
    return opts


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[bool, float, str]:
    """(correct, worst max |diff|, why not) of one run's outputs against the pinned release's."""
    worst, why = 0.0, ""
    for name, ref in reference.items():
        got = outputs.get(name)
        if got is None or got.shape != ref.shape:
            return False, math.inf, f"{name}: shape {None if got is None else got.shape} != {ref.shape}"
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        limit = TOLERANCE * (1.0 + (float(np.max(np.abs(ref.astype(np.float64)))) if ref.size else 0.0))
        worst = diff if math.isnan(diff) else max(worst, diff)
        if not diff <= limit:
            why = why or f"{name}: max |diff| {diff:.3g} > {limit:.3g}"
        if name == "logits" and ref.size and not np.array_equal(got.argmax(-1), ref.argmax(-1)):
            why = why or "logits: argmax differs"
    return not why, worst, why


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def open_session(ort: Any, job: dict, optimised: str | None = None) -> Any:
    opts = session_options(ort, job["threads"], optimised)
    return ort.InferenceSession(job["path"], opts, providers=["CPUExecutionProvider"])


def check_job(ort: Any, job: dict, feeds: dict[str, np.ndarray]) -> tuple[dict, Any]:
    """One graph file on this venv's onnxruntime: load, compare, write the optimised model.

    Returns the result and the open session (None when it did not load or run), kept for the timing.
    """
    folder = str(Path(job["path"]).parent)
    result: dict[str, Any] = {"loaded": False, "correct": False, "max_abs_diff": None, "median_ms": None}
    result["error"] = None
    try:
        session = open_session(ort, job)
    except Exception as exc:  # any load failure is the measurement
        result["error"] = ort_message(exc, folder)
        return result, None
    result["loaded"] = True
    try:
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, feeds), strict=True))
    except Exception as exc:
        result["error"] = "run: " + ort_message(exc, folder)
        return result, None
    correct, worst, why = compare(outputs, load_npz(job["reference"]))
    result.update(correct=correct, max_abs_diff=worst if math.isfinite(worst) else None, error=why or None)
    exact, worst_exact, _ = compare(outputs, load_npz(job["unoptimised"]))  # the graph's own arithmetic
    result["matches_unoptimised"] = exact
    result["max_abs_diff_unoptimised"] = worst_exact if math.isfinite(worst_exact) else None
    try:
        open_session(ort, job, job["optimised"])
    except Exception as exc:
        result["optimise_error"] = ort_message(exc, folder)
    return result, session


def interleaved_ms(
    sessions: dict[str, Any], feeds: dict[str, np.ndarray], warmup: int, repeats: int
) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms per session, the sessions of one graph taking turns run by run (so drift hits all alike)."""
    times: dict[str, list[float]] = {key: [] for key in sessions}
    errors: dict[str, str] = {}
    for round_ in range(warmup + repeats):
        for key, session in list(sessions.items()):
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            try:
                session.run(None, feeds)
            except Exception as exc:  # a run that fails only when repeated is wrong too
                errors[key] = "repeated run: " + ort_message(exc)
                del sessions[key]
                continue
            if round_ >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items() if v}, errors


def worker_graph(ort: Any, jobs: list[dict], emit: Any) -> None:
    """Check each file of one graph not yet checked, then time all of them interleaved."""
    feeds = load_npz(jobs[0]["feeds"])
    sessions = {}
    for job in jobs:
        session = None
        if job["check"]:
            emit({"start": job["key"]})
            try:
                result, session = check_job(ort, job, feeds)
            except Exception as exc:  # anything unforeseen is this file's result, not the release's end
                result = {"loaded": False, "correct": False, "max_abs_diff": None, "median_ms": None}
                result["error"] = f"worker: {type(exc).__name__}: {ort_message(exc)}"
            emit({"done": job["key"], "result": result})
        else:  # checked by an earlier worker that died later on: open it again for the timing only
            try:
                session = open_session(ort, job)
            except Exception:
                session = None
        if session is not None:
            sessions[job["key"]] = session
    if jobs[0]["time"]:
        emit({"start_timing": jobs[0]["graph"]})
        ms, errors = interleaved_ms(sessions, feeds, jobs[0]["warmup"], jobs[0]["repeats"])
        emit({"timing": jobs[0]["graph"], "median_ms": ms, "errors": errors})


def worker_main(jobs_path: Path, results_path: Path) -> None:
    """Run the jobs graph by graph, a JSON line before each step (so a crash names its file) and after."""
    import onnxruntime as ort

    jobs = json.loads(jobs_path.read_text())
    with results_path.open("a") as out:

        def emit(record: dict) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        emit({"onnxruntime": ort.__version__, "numpy": np.__version__})
        for graph in dict.fromkeys(j["graph"] for j in jobs):
            worker_graph(ort, [j for j in jobs if j["graph"] == graph], emit)


# --- venvs ---------------------------------------------------------------------------------------------


def available_versions() -> list[str]:
    """The latest patch of each minor OLDEST_MINOR..NEWEST_MINOR that PyPI has for this Python."""
    cmd = [sys.executable, "-m", "pip", "index", "versions", "onnxruntime"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("Available versions:")), "")
    latest: dict[int, tuple[int, ...]] = {}
    for text in line.split(":", 1)[-1].split(","):
        parts = tuple(int(p) for p in re.findall(r"\d+", text.strip()))
        if len(parts) == 3 and parts[0] == 1 and OLDEST_MINOR <= parts[1] <= NEWEST_MINOR:
            latest[parts[1]] = max(latest.get(parts[1], parts), parts)
    if not latest:
        print(
            "warning: `pip index versions onnxruntime` listed nothing; using the built-in list",
            file=sys.stderr,
        )
        return DEFAULT_VERSIONS.split(",")
    return [".".join(map(str, latest[m])) for m in sorted(latest)]


def pip_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("ERROR:")]
    return first_line(lines[0] if lines else proc.stderr or proc.stdout or f"exit {proc.returncode}")


def probe(python: Path) -> tuple[dict | None, str]:
    code = "import json, numpy, onnxruntime; print(json.dumps([onnxruntime.__version__, numpy.__version__]))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return None, first_line(tail[-1] if tail else f"exit {proc.returncode}")
    ort_version, numpy_version = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"onnxruntime": ort_version, "numpy": numpy_version}, ""


def pip_install(python: Path, *requirements: str) -> str:
    cmd = [str(python), "-m", "pip", "install", "-q", "--only-binary", ":all:", *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    return pip_error(proc) if proc.returncode else ""


def ensure_venv(version: str, root: Path, base_python: str) -> tuple[Path | None, dict]:
    """The cached venv of one release (made on first use): its python, or None and why not."""
    venv = root / f"onnxruntime-{version}"
    python, marker = venv / "bin" / "python", venv / ".installed.json"
    if marker.is_file() and python.exists():
        return python, json.loads(marker.read_text())
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([base_python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if proc.returncode:
        return None, {"error": "venv: " + first_line(proc.stderr)}
    error = pip_install(python, f"onnxruntime=={version}", "numpy")
    if error:
        shutil.rmtree(venv, ignore_errors=True)
        return None, {"error": "not installable: " + error}
    facts, error = probe(python)
    if facts is None:  # releases built against numpy 1.x fail to import under numpy 2
        error = pip_install(python, "numpy<2") or error
        facts, error = probe(python)
    if facts is None or facts["onnxruntime"] != version:
        shutil.rmtree(venv, ignore_errors=True)
        return None, {"error": "not installable: " + (error or f"imports {facts}")}
    marker.write_text(json.dumps(facts))
    return python, facts


# --- the bundle: graphs, tiers, feeds, references -----------------------------------------------------


def discover(bundle: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(FP32 graph names, tier -> {graph name: file the tier runs}); tiers by globbing ``<graph>_<tier>``."""
    stems = sorted(p.name[: -len(".onnx")] for p in bundle.glob("*.onnx"))
    fp32 = [s for s in stems if not any(s != t and s.startswith(t + "_") for t in stems)]
    tier_files: dict[str, dict[str, str]] = {}
    for stem in stems:
        for graph in fp32:
            if stem.startswith(graph + "_"):
                tier_files.setdefault(stem[len(graph) + 1 :], {})[graph] = f"{stem}.onnx"
    tiers = {FP32: {g: f"{g}.onnx" for g in fp32}}
    for tier in sorted(tier_files):
        tiers[tier] = {g: tier_files[tier].get(g, f"{g}.onnx") for g in fp32}
    return fp32, tiers


def declared_fp32_graphs(bundle: Path, tier: str) -> list[str] | None:
    report = bundle / f"quantise_{tier}.json"
    return json.loads(report.read_text()).get("fp32_graphs") if report.is_file() else None


def value_shape(value: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def concrete(shape: list[int | str], unknown: list[str]) -> list[int]:
    dims = []
    for dim in shape:
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        else:
            name = str(dim)
            if name not in DIMS:
                unknown.append(name)
            dims.append(DIMS.get(name, UNKNOWN_DIM))
    return dims


def token_ids(length: int, vocab: int, audio_token: int | None, audio_count: int, rng: Any) -> np.ndarray:
    """Valid text ids; ``audio_count`` audio tokens follow the first text id when the graph takes audio."""
    text = rng.integers(1, vocab, size=length)
    if audio_token is not None:
        text = np.where(text == audio_token, (audio_token + 1) % vocab or 1, text)
        if audio_count:
            text[1 : 1 + audio_count] = audio_token
    return text.astype(np.int64)


def graph_feeds(path: Path, config: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Deterministic inputs of one FP32 graph, from the names and shapes it stores."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    rng = np.random.default_rng(zlib.crc32(path.stem.encode()))
    text = config.get("text_config", {})
    vocab = int(text.get("vocab_size", 2))
    audio = "audio_embeds" in inputs
    audio_count = concrete(value_shape(inputs["audio_embeds"]), [])[1] if audio else 0
    past = PAST if any(n.startswith("past_key_values") for n in inputs) else 0
    unknown: list[str] = []
    feeds = {}
    for name, value in inputs.items():
        shape = concrete(value_shape(value), unknown)
        if name == "input_ids":
            ids = token_ids(
                int(np.prod(shape)),
                vocab,
                config.get("audio_token_index") if audio else None,
                audio_count,
                rng,
            )
            feeds[name] = ids.reshape(shape)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(past, past + shape[-1], dtype=np.int64), shape).copy()
        elif name == "num_samples":
            feeds[name] = np.full(shape, DIMS["samples"], dtype=np.int64)
        elif value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            scale = 0.1 if name == "waveform" else 1.0
            feeds[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
        else:  # attention masks and any other integer input: all ones
            dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feeds[name] = np.ones(shape, dtype=dtype)
    return feeds, sorted(set(unknown))


def pinned_outputs(
    path: Path, feeds: dict[str, np.ndarray], threads: int, level: str
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = session_options(ort, threads, level=level)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def op_analysis(path: Path) -> dict:
    """Tracked op counts of a graph and how many MatMuls still read a DequantizeLinear output."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    nodes = list(graph.node)
    counts = Counter(n.op_type for n in nodes)
    producer = {out: n for n in nodes for out in n.output}
    constant = {i.name for i in graph.initializer} | {
        o for n in nodes if n.op_type == "Constant" for o in n.output
    }

    def source(name: str) -> Any:  # the node behind a value, looking through Identity
        node = producer.get(name)
        while node is not None and node.op_type == "Identity":
            node = producer.get(node.input[0])
        return node

    dq_inputs = [
        source(i).input[0]
        for n in nodes
        if n.op_type in MATMUL_OPS
        for i in n.input
        if source(i) is not None and source(i).op_type == "DequantizeLinear"
    ]
    nbits = Counter(
        ", ".join(
            f"{a.name}={onnx.helper.get_attribute_value(a)}"
            for a in sorted(n.attribute, key=lambda a: a.name)
            if a.name in NBITS_ATTRS
        )
        for n in nodes
        if n.op_type == "MatMulNBits"
    )
    return {
        "op_counts": {op: counts[op] for op in TRACKED_OPS if counts[op]},
        **({"matmulnbits": dict(nbits)} if nbits else {}),
        "dq_matmul_pairs": len(dq_inputs),  # any DequantizeLinear -> MatMul (activations too)
        "dq_weight_matmul_pairs": sum(x in constant for x in dq_inputs),  # a stored weight's: not fused
        "quantize_linear": counts["QuantizeLinear"],
    }


def file_digest(path: Path) -> str:
    """sha256 of a graph and its external-data sidecar: a bundle rewritten mid-run is reported, not mixed."""
    digest = hashlib.sha256(path.read_bytes())
    sidecar = path.with_name(path.name + "_data")
    if sidecar.is_file():
        digest.update(sidecar.read_bytes())
    return digest.hexdigest()[:16]


def tier_kind(sources: list[dict]) -> str:
    """weight-only / static / dynamic / float, from what the tier's own source graphs hold."""
    if any(s["op_counts"].get("MatMulInteger") for s in sources):
        return "dynamic"
    if any(s["dq_weight_matmul_pairs"] for s in sources):
        return "static" if any(s["quantize_linear"] for s in sources) else "weight-only"
    return "float"


def prepare_bundle(bundle: Path, work: Path, threads: int) -> dict:
    """Feeds per graph and pinned references per file, saved as .npz; the tiers and their kinds."""
    import onnxruntime as ort

    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    fp32, tiers = discover(bundle)
    work.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for graph in fp32:
        feeds, unknown = graph_feeds(bundle / f"{graph}.onnx", config)
        np.savez(work / f"feeds_{graph}.npz", **feeds)
        graphs[graph] = {"feeds": {k: list(v.shape) for k, v in feeds.items()}}
        if unknown:
            graphs[graph]["unknown_dims"] = f"{unknown} fed as {UNKNOWN_DIM}"
    files = sorted({f for t in tiers.values() for f in t.values()})
    sources = {}
    for file in files:
        graph = next(g for t in tiers.values() for g, f in t.items() if f == file)
        feeds = dict(np.load(work / f"feeds_{graph}.npz"))
        np.savez(work / f"ref_{file}.npz", **pinned_outputs(bundle / file, feeds, threads, "ORT_ENABLE_ALL"))
        np.savez(
            work / f"exact_{file}.npz", **pinned_outputs(bundle / file, feeds, threads, "ORT_DISABLE_ALL")
        )
        sources[file] = dict(op_analysis(bundle / file), sha256=file_digest(bundle / file))
    described = {}
    for tier, mapping in tiers.items():
        own = [f for g, f in mapping.items() if f != f"{g}.onnx"]
        described[tier] = {
            "kind": FP32 if tier == FP32 else tier_kind([sources[f] for f in own]),
            "files": mapping,
            "own_files": own if tier != FP32 else list(mapping.values()),
            "fp32_graphs_declared": declared_fp32_graphs(bundle, tier),
        }
    return {
        "graphs": graphs,
        "tiers": described,
        "files": files,
        "sources": sources,
        "pinned": ort.__version__,
    }


# --- one release over one bundle ------------------------------------------------------------------------


def worker_jobs(bundle: Path, prep: dict, work: Path, opt_dir: Path, args: argparse.Namespace) -> list[dict]:
    jobs = []
    for file in prep["files"]:
        graph = next(g for t in prep["tiers"].values() for g, f in t["files"].items() if f == file)
        jobs.append(
            {
                "key": file,
                "graph": graph,
                "path": str((bundle / file).resolve()),
                "feeds": str(work / f"feeds_{graph}.npz"),
                "reference": str(work / f"ref_{file}.npz"),
                "unoptimised": str(work / f"exact_{file}.npz"),
                "optimised": str(opt_dir / f"opt_{file}"),
                "threads": args.threads,
                "warmup": args.warmup,
                "repeats": args.repeats,
            }
        )
    return jobs


def crashed(why: str) -> dict:
    return {
        "loaded": False,
        "correct": False,
        "max_abs_diff": None,
        "median_ms": None,
        "error": "crash: " + why,
    }


def launch(python: Path, pending: list[dict], work: Path) -> tuple[list[dict], str]:
    """One worker over the pending jobs: its JSON lines, and how it ended."""
    jobs_path, lines_path = work / "jobs.json", work / "results.jsonl"
    jobs_path.write_text(json.dumps(pending))
    lines_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", str(jobs_path), str(lines_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        ended = f"worker exit {proc.returncode}: {first_line(tail[-1] if tail else '')}"
    except subprocess.TimeoutExpired:
        ended = f"worker timed out after {WORKER_TIMEOUT_S} s"
    lines = lines_path.read_text().splitlines() if lines_path.is_file() else []
    return [json.loads(line) for line in lines], ended


def run_worker(python: Path, jobs: list[dict], work: Path) -> dict[str, dict]:
    """Results per file; a worker that dies is started again past the file or timing it died in."""
    results: dict[str, dict] = {}
    timed: set[str] = set()
    while True:
        pending = [  # files to check, and checked files that ran, again for their graph's timing
            dict(j, check=j["key"] not in results, time=j["graph"] not in timed)
            for j in jobs
            if j["key"] not in results
            or (j["graph"] not in timed and results[j["key"]].get("matches_unoptimised") is not None)
        ]
        if not pending:
            return results
        records, ended = launch(python, pending, work)
        current: tuple[str, str] | None = None
        progress = False
        for record in records:
            if "start" in record or "start_timing" in record:
                current = (
                    ("file", record["start"]) if "start" in record else ("timing", record["start_timing"])
                )
            elif "done" in record:
                results[record["done"]], current, progress = record["result"], None, True
            elif "timing" in record:
                for key, ms in record["median_ms"].items():
                    results[key]["median_ms"] = ms
                for key, error in record["errors"].items():
                    results[key].update(correct=False, error=error)
                timed.add(record["timing"])
                current, progress = None, True
        if current is None and not progress:  # died before its first step
            first = pending[0]
            current = ("file", first["key"]) if first["check"] else ("timing", first["graph"])
        if current is not None and current[0] == "file":
            results[current[1]] = crashed(ended)
        elif current is not None:
            timed.add(current[1])
            for job in jobs:
                if job["graph"] == current[1] and job["key"] in results:
                    results[job["key"]]["timing_error"] = "crash: " + ended


def add_fusion(results: dict[str, dict], opt_dir: Path) -> None:
    for file, result in results.items():
        optimised = opt_dir / f"opt_{file}"
        if result.get("loaded") and optimised.is_file():
            result.update(op_analysis(optimised))
            result.pop("quantize_linear", None)
        elif result.get("loaded"):
            result.setdefault("optimise_error", "no optimised model written")


def graph_fused(kind: str, source: dict, result: dict) -> bool | None:
    if "op_counts" not in result:
        return None
    ops = result["op_counts"]
    if kind in ("weight-only", "static"):  # every stored weight's DQ -> MatMul became a fused kernel
        return result["dq_weight_matmul_pairs"] == 0 and any(ops.get(op) for op in FUSED_OPS)
    if kind == "dynamic":
        needs = bool(source["op_counts"].get("MatMulInteger"))
        return not needs or bool(ops.get("DynamicQuantizeMatMul") or ops.get("MatMulIntegerToFloat"))
    return True


def tier_verdict(tier: dict, prep: dict, results: dict[str, dict]) -> dict:
    """runs / fused of one tier on one release, with its own graphs' records and the shared ones' status."""
    graphs: dict[str, dict] = {}
    runs, fused, errors, unfused, weights, exact = True, True, {}, 0, 0, True
    for graph, file in tier["files"].items():
        result = results[file]
        ok = bool(result["loaded"] and result["correct"])
        runs = runs and ok
        exact = exact and bool(result["loaded"] and result.get("matches_unoptimised"))
        if result.get("error"):
            errors[file] = result["error"]
        if file not in tier["own_files"]:
            graphs[graph] = {"file": file, "shared_fp32": True, "loaded": result["loaded"], "correct": ok}
            continue
        record = dict(result, file=file)
        fp32_ms = results[f"{graph}.onnx"].get("median_ms")
        ms = result.get("median_ms")
        record["ratio_to_fp32"] = round(ms / fp32_ms, 3) if ms and fp32_ms else None
        record["fused"] = graph_fused(tier["kind"], prep["sources"][file], result)
        fused = fused and bool(record["fused"])
        graphs[graph] = record
        weights += prep["sources"][file]["dq_weight_matmul_pairs"]
        unfused += result.get("dq_weight_matmul_pairs", 0)
    loaded = all(r.get("loaded") for r in graphs.values())
    verdict = {"runs": runs, "fused": runs and fused, "fuses": loaded and fused, "graphs": graphs}
    verdict["matches_unoptimised"] = exact
    verdict["errors"] = errors or None
    if tier["kind"] in ("weight-only", "static"):  # of the weight DQ -> MatMul pairs stored, those left
        verdict["weight_matmuls_unfused"] = f"{unfused}/{weights}"
    return verdict


def not_run(tier: dict, error: str) -> dict:
    entry = {"runs": False, "fused": False, "fuses": False, "graphs": {}, "errors": {"*": error}}
    return dict(entry, tested=False)


# --- the summary and the table -----------------------------------------------------------------------------


def oldest_from(versions: list[str], per_version: dict[str, dict], key: str) -> str:
    """The oldest tested release from which every newer tested one has ``key`` true; "none" otherwise."""
    tested = [v for v in versions if per_version[v].get("tested", True)]
    oldest = "none"
    for version in reversed(tested):
        if not per_version[version][key]:
            break
        oldest = version
    return oldest


def summarise(versions: list[str], tiers: dict[str, dict]) -> dict:
    summary = {}
    for name, tier in tiers.items():
        per_version = tier["versions"]
        tested = [v for v in versions if per_version[v].get("tested", True)]
        newest = per_version[tested[-1]]["graphs"] if tested else {}
        summary[name] = {
            "kind": tier["kind"],
            "oldest_correct": oldest_from(versions, per_version, "runs"),
            "oldest_fused": oldest_from(versions, per_version, "fused"),
            # the fused kernels alone, whatever the numbers: where "fast" starts even if not yet "correct"
            "oldest_fusing": oldest_from(versions, per_version, "fuses"),
            # releases whose optimised run matches the pinned release's unoptimised one (ORT_DISABLE_ALL)
            "match_unoptimised_on": [v for v in tested if per_version[v].get("matches_unoptimised")],
            "ratio_to_fp32_newest": {
                g: r.get("ratio_to_fp32") for g, r in newest.items() if not r.get("shared_fp32")
            },
            "ratio_to_fp32": {  # per release, per graph: "fast" judged by the numbers
                v: {
                    g: r.get("ratio_to_fp32")
                    for g, r in per_version[v]["graphs"].items()
                    if not r.get("shared_fp32")
                }
                for v in tested
            },
        }
    return summary


def mark(entry: dict) -> str:
    """One letter per release: F fused, R runs, x a graph did not load, w wrong numbers, - not installable."""
    if not entry.get("tested", True):
        return "-"
    if entry["fused"] or entry["runs"]:
        return "F" if entry["fused"] else "R"
    return "x" if any(not g["loaded"] for g in entry["graphs"].values()) else "w"


def print_table(report: dict) -> None:
    versions = report["versions_tried"]
    print(f"\n{report['machine']['cpu']} ({' '.join(report['machine']['flags'])}), {report['wall_s']} s")
    print(
        "per release: F correct and fused, R correct (not fused), w wrong, x load error, - not installable;"
    )
    print("fusing: the oldest release from which the fused kernels appear, whatever the numbers")
    for bundle, data in report["bundles"].items():
        print(f"\n{bundle}")
        head = f"{'tier':<10}{'kind':<12}{'oldest correct':<16}{'oldest fused':<14}{'fusing':<9}"
        print(f"{head}1.{' '.join(v.split('.')[1] for v in versions)}")
        for tier, summary in data["summary"].items():
            marks = "  ".join(mark(data["tiers"][tier]["versions"][v]) for v in versions)
            row = (
                f"{tier:<10}{summary['kind']:<12}{summary['oldest_correct']:<16}{summary['oldest_fused']:<14}"
            )
            print(f"{row}{summary['oldest_fusing']:<9}  {marks}")
            ratios = " ".join(f"{g}={r}" for g, r in summary["ratio_to_fp32_newest"].items() if r)
            if tier != FP32 and ratios:
                print(f"{'':<10}x FP32 time at {versions[-1]}: {ratios}")
            exact = summary["match_unoptimised_on"]
            if exact != [v for v in versions if data["tiers"][tier]["versions"][v]["runs"]]:
                minors = " ".join(v.split(".")[1] for v in exact) or "none"
                print(f"{'':<10}matches the unoptimised graph on 1.x: {minors}")
    print_errors(report)


def print_errors(report: dict) -> None:
    """Each release's distinct error lines per bundle, with the files they came from."""
    lines = []
    for bundle, data in report["bundles"].items():
        for version, by_file in data["errors"].items():
            by_message: dict[str, list[str]] = {}
            for file, message in sorted(by_file.items()):
                by_message.setdefault(message, []).append(file)
            for message, files in by_message.items():
                where = (
                    "all graphs" if len(files) >= len(data["sources"]) or files == ["*"] else ", ".join(files)
                )
                lines.append(f"  {version} {bundle} [{where}]: {message}")
    if lines:
        print("\nerrors (first line):")
        print("\n".join(lines))


# --- main --------------------------------------------------------------------------------------------------


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") or f.startswith("amx")]
    return {"cpu": names[0] if names else platform.processor(), "flags": wanted, "cpu_count": os.cpu_count()}


def file_errors(results: dict[str, dict]) -> dict[str, str]:
    errors = {}
    for file, result in sorted(results.items()):
        if result.get("error"):
            errors[file] = result["error"]
        elif result.get("optimise_error"):
            errors[file] = f"optimised model: {result['optimise_error']}"
        elif result.get("timing_error"):
            errors[file] = f"timing: {result['timing_error']}"
    return errors


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    versions = args.versions.split(",") if args.versions else available_versions()
    versions = sorted(
        dict.fromkeys(v.strip() for v in versions if v.strip()),
        key=lambda v: tuple(int(p) for p in re.findall(r"\d+", v)),
    )
    bundles = [Path(b) for b in args.bundle]
    work = Path(tempfile.mkdtemp(prefix="runtime-versions-"))
    try:
        preps = {b: prepare_bundle(b, work / f"b{i}", args.threads) for i, b in enumerate(bundles)}
        report: dict[str, Any] = {
            "about": "oldest onnxruntime that runs each tier correctly / fast (bench/runtime_versions.py)",
            "machine": machine(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "pinned_onnxruntime": next(iter(preps.values()))["pinned"],
            "settings": {
                "threads": args.threads,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "tolerance": f"{TOLERANCE} * (1 + max |reference|), logits argmax equal",
                "optimisation": "ORT_ENABLE_ALL",
                "provider": "CPUExecutionProvider",
            },
            "versions_tried": versions,
            "installs": {},
            "bundles": {},
        }
        for bundle, prep in preps.items():
            report["bundles"][str(bundle)] = {
                "graphs": prep["graphs"],
                "sources": prep["sources"],
                "tiers": {t: dict(body, versions={}) for t, body in prep["tiers"].items()},
                "errors": {},
            }
        for version in versions:
            print(f"onnxruntime {version}: venv ...", file=sys.stderr, flush=True)
            python, facts = ensure_venv(version, Path(args.venvs).expanduser(), args.python)
            report["installs"][version] = facts
            for i, (bundle, prep) in enumerate(preps.items()):
                tiers = report["bundles"][str(bundle)]["tiers"]
                if python is None:
                    for tier in tiers.values():
                        tier["versions"][version] = not_run(tier, facts["error"])
                    report["bundles"][str(bundle)]["errors"][version] = {"*": facts["error"]}
                    continue
                print(f"onnxruntime {version}: {bundle} ...", file=sys.stderr, flush=True)
                opt_dir = work / f"opt-{version}-{i}"
                opt_dir.mkdir()
                results = run_worker(python, worker_jobs(bundle, prep, work / f"b{i}", opt_dir, args), work)
                add_fusion(results, opt_dir)
                if file_errors(results):
                    report["bundles"][str(bundle)]["errors"][version] = file_errors(results)
                shutil.rmtree(opt_dir, ignore_errors=True)
                for tier in tiers.values():
                    tier["versions"][version] = tier_verdict(tier, prep, results)
        for bundle, data in zip(preps, report["bundles"].values(), strict=True):
            data["summary"] = summarise(versions, data["tiers"])
            changed = [f for f, src in data["sources"].items() if file_digest(bundle / f) != src["sha256"]]
            if changed:
                data["changed_during_run"] = changed
                print(f"warning: {bundle}: {', '.join(changed)} changed during the run", file=sys.stderr)
        report["wall_s"] = round(time.perf_counter() - start, 1)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def to_json(value: Any, indent: str = "") -> str:
    """Indented JSON whose small objects (a graph's record, a summary's ratios) stay on one line."""
    flat = json.dumps(value)
    if not isinstance(value, dict | list) or not value or len(indent) + len(flat) <= INLINE_JSON:
        return flat
    inner = indent + " "
    if isinstance(value, list):
        items = [to_json(v, inner) for v in value]
    else:
        items = [f"{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items()]
    brackets = "[]" if isinstance(value, list) else "{}"
    return brackets[0] + "\n" + ",\n".join(inner + item for item in items) + "\n" + indent + brackets[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", action="append", help="bundle folder (repeatable)")
    parser.add_argument(
        "--versions",
        help="comma-separated onnxruntime releases (default: latest patch "
        f"of each minor 1.{OLDEST_MINOR}..1.{NEWEST_MINOR} on PyPI)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime_versions.json")
    parser.add_argument(
        "--venvs", default="~/.cache/granite-onnx/ort-venvs", help="cache of per-release venvs"
    )
    parser.add_argument("--python", default="python3", help="interpreter the venvs are made from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("JOBS", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return 0
    if not args.bundle:
        parser.error("at least one --bundle is needed")
    missing = [b for b in args.bundle if not Path(b).is_dir()]
    if missing:
        print(f"error: no bundle folder {', '.join(missing)}", file=sys.stderr)
        return 2
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(report) + "\n")
    print_table(report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
