"""Benchmark: quantise a full-size random-weight bundle into each tier; size, time, memory, speed vs FP32.

A benchmark, never a test: at the 4.1-2b shape (2.3 B parameters) one LLM graph's ``quantize_dynamic``
alone peaks near 21.5 GiB and the whole run takes about an hour. Every tier is quantised in its own
process (``granite-onnx quantise``) and every timed session runs in its own process too, so each peak
RSS is that process's own (``os.wait4``'s ``ru_maxrss``, not ``RUSAGE_CHILDREN``'s running maximum)
and memory never accumulates. FP32 and every tier are timed in the same run and printed as ratios:
decode_step ms/token over a synthetic past, and the encoder on 30 s of real speech.

    python bench/quantise_full.py --work /tmp/granite-full            # builds the bundle if missing
    python bench/quantise_full.py --bundle out/tiny --tier int8 --tokens 2 --past 8   # smoke size
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from granite_onnx.quantise.tiers import TIERS
from granite_onnx.specs import DECODE_STEP, ENCODER, GRAPH_NAMES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "bench" / "configs" / "granite-speech-4.1-2b.json"  # copied from ../shared/configs
ENCODER_CLIP = "mfa-acoustic-corpus.flac"
ENCODER_SECONDS = 30.0
ENCODER_REPEATS = 2
DECODE_WARMUP = 2
FP32 = "fp32"
TIMED = (DECODE_STEP, ENCODER)


# --- child processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """How a child process ended, what it cost, and what it said."""

    returncode: int
    wall_s: float
    peak_rss_mib: float  # the child's own ru_maxrss (not its children's, not ours)
    stdout: str
    stderr_tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> dict:
        """Exit code, the signal that killed it (SIGKILL is usually the OOM killer), last stderr lines."""
        doc: dict = {"exit": self.returncode}
        if self.returncode < 0:
            doc["signal"] = signal.Signals(-self.returncode).name
        doc["stderr_tail"] = list(self.stderr_tail)
        return doc

    def last_json(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_child(cmd: list[str], tail: int = 20) -> Child:
    """Run ``cmd``, echoing its stderr live, and reap it with ``wait4`` to get its own peak RSS."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace")
        lines: collections.deque[str] = collections.deque(maxlen=tail)
        for line in proc.stderr:
            sys.stderr.write(line)
            lines.append(line.rstrip("\n"))
        proc.stderr.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        return Child(
            proc.returncode, round(wall, 3), round(usage.ru_maxrss / 1024, 1), out.read(), tuple(lines)
        )


# --- the full-size bundle ----------------------------------------------------------------------------


def build_full_bundle(work: Path, config: Path, jobs: int = 1, check: bool = True) -> Path:
    """``<work>/bundle`` with the three FP32 graphs (exported by bench/export_full.py when missing)."""
    bundle = work / "bundle"
    missing = [g for g in GRAPH_NAMES if not (bundle / f"{g}.onnx").is_file()]
    if missing:
        cmd = [sys.executable, str(REPO / "bench" / "export_full.py"), "--work", str(work)]
        cmd += ["--config", str(config), "--jobs", str(jobs)] + ([] if check else ["--no-check"])
        for graph in missing:
            cmd += ["--graph", graph]
        print(f"exporting {', '.join(missing)} into {bundle} (bench/export_full.py)", flush=True)
        if subprocess.run(cmd).returncode != 0:
            sys.exit("bench/export_full.py failed: see its output above")
    complete_bundle(bundle, work / "checkpoint")
    return bundle


def full_tokenizer(audio_token_id: int):
    """The fixture's byte-level BPE with filler ids before ``<|audio|>``, so that it lands on
    ``audio_token_id`` as in the real checkpoint (the fillers are plain vocab entries no merge reaches)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from granite_onnx.fixtures import (
        AUDIO_TOKEN,
        CHAT_TEMPLATE,
        EOS_TOKEN,
        PAD_TOKEN,
        PROCESSOR_CLASS,
        TinySpec,
        build_tokenizer,
    )

    spec = TinySpec()
    data = json.loads(build_tokenizer(spec).backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), audio_token_id):
        vocab[f"<|filler_{i}|>"] = i
    for token in data["added_tokens"]:
        if token["content"] == AUDIO_TOKEN:
            token["id"] = audio_token_id
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.text_max_position_embeddings,
    )
    tokenizer._set_processor_class(PROCESSOR_CLASS)  # as the fixture checkpoint records it
    return tokenizer


def complete_bundle(bundle: Path, checkpoint: Path) -> None:
    """Add what the runtime needs beside the graphs (config, processor and tokenizer files), only where
    absent, then check the prompt: it must hold the config's audio token id and stay inside the vocab."""
    from granite_onnx.fixtures import TinySpec, preprocessor_config, processor_config
    from granite_onnx.runtime.prompt import PromptBuilder
    from granite_onnx.specs import ModelDims

    for name in ("config.json", "generation_config.json"):
        if not (bundle / name).is_file() and (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, bundle / name)
    dims = ModelDims.from_file(bundle / "config.json")
    # The front end (mel settings, projector window) is the real model's in the fixture too.
    for name, doc in (
        ("preprocessor_config.json", preprocessor_config(TinySpec())),
        ("processor_config.json", processor_config(TinySpec())),
    ):
        if not (bundle / name).is_file():
            (bundle / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if not (bundle / "tokenizer.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            full_tokenizer(dims.audio_token_id).save_pretrained(tmp)  # tokenizer*.json, chat_template.jinja
            for path in Path(tmp).iterdir():
                if not (bundle / path.name).exists():
                    shutil.copyfile(path, bundle / path.name)
    ids = PromptBuilder(bundle).input_ids(3)
    if ids.count(dims.audio_token_id) != 3 or max(ids) >= dims.vocab:
        sys.exit(
            f"{bundle}: the prompt ids {ids} do not hold <|audio|> = {dims.audio_token_id} three times "
            f"inside the vocabulary of {dims.vocab}: delete its tokenizer files and run again"
        )


# --- measurements (each in its own child) -------------------------------------------------------------


def time_decode(
    bundle: Path, tier: str | None, threads: int, tokens: int, past: int, outputs: Path | None = None
) -> dict:
    """Median ms of one decode_step over a fixed-seed random past of ``past`` positions, presents fed back."""
    from granite_onnx.runtime.bundle import Bundle
    from granite_onnx.runtime.pipeline import step_feeds
    from granite_onnx.runtime.sessions import open_session

    b = Bundle.open(bundle, tier)
    spec, dims = b.specs[DECODE_STEP], b.dims
    start = time.perf_counter()
    session = open_session(b.path(DECODE_STEP), threads)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    past_names = spec.input_names[3:]
    kv = [rng.standard_normal((1, dims.kv_heads, past, dims.head_dim), dtype=np.float32) for _ in past_names]
    token, times = 0, []
    for step in range(DECODE_WARMUP + tokens):
        feeds = step_feeds(dims.num_layers, np.array([[token]], np.int64), kv)
        t0 = time.perf_counter()
        logits, *kv = session.run(spec.output_names, feeds)
        if step == 0 and outputs is not None:  # same feeds for every tier: comparable with FP32's
            np.save(outputs / f"{DECODE_STEP}-{tier or FP32}.npy", logits)
        if step >= DECODE_WARMUP:
            times.append((time.perf_counter() - t0) * 1e3)
        token = int(np.argmax(logits[0]))
    return {
        "file": b.path(DECODE_STEP).name,
        "ms_per_token": round(statistics.median(times), 3),
        "ms_min": round(min(times), 3),
        "ms_max": round(max(times), 3),
        "past": past,
        "tokens": tokens,
        "session_load_s": round(load_s, 3),
    }


def time_encoder(
    bundle: Path, tier: str | None, threads: int, clip: Path, outputs: Path | None = None
) -> dict:
    """Best of two encoder runs on ``clip``'s log-mel, the audio tiled or cut to 30 s."""
    from granite_onnx.runtime.audio import load_audio
    from granite_onnx.runtime.bundle import Bundle
    from granite_onnx.runtime.features import log_mel
    from granite_onnx.runtime.sessions import open_session

    b = Bundle.open(bundle, tier)
    rate = b.features.sampling_rate
    audio = np.resize(load_audio(clip, rate), int(ENCODER_SECONDS * rate))  # np.resize repeats the clip
    features = log_mel(audio, b.features)[None]
    start = time.perf_counter()
    session = open_session(b.path(ENCODER), threads)
    load_s = time.perf_counter() - start
    runs = []
    for _ in range(ENCODER_REPEATS):
        t0 = time.perf_counter()
        embeds = session.run(None, {"input_features": features})[0]
        runs.append(time.perf_counter() - t0)
    if outputs is not None:
        np.save(outputs / f"{ENCODER}-{tier or FP32}.npy", embeds)
    return {
        "file": b.path(ENCODER).name,
        "seconds": round(min(runs), 4),
        "runs_s": [round(r, 4) for r in runs],
        "audio_s": ENCODER_SECONDS,
        "frames": int(features.shape[1]),
        "audio_tokens": int(embeds.shape[1]),
        "session_load_s": round(load_s, 3),
    }


def child_main(args: argparse.Namespace) -> None:
    graph, tier = args.child
    tier = None if tier == FP32 else tier
    outputs = args.work / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    if graph == DECODE_STEP:
        result = time_decode(args.bundle, tier, args.threads, args.tokens, args.past, outputs)
    else:
        result = time_encoder(args.bundle, tier, args.threads, args.clips / ENCODER_CLIP, outputs)
    print(json.dumps(result))


# --- the run -----------------------------------------------------------------------------------------


def graph_sizes(bundle: Path, tier: str | None) -> dict[str, dict] | None:
    """File and bytes (graph + sidecar) of each graph ``tier`` runs; None when one is missing."""
    from granite_onnx.quantise.report import graph_bytes
    from granite_onnx.runtime.bundle import resolve_graphs, tier_fp32_graphs

    paths, missing = resolve_graphs(bundle, tier)
    if missing:
        return None
    reused = tier_fp32_graphs(bundle, tier) if tier else ()
    return {g: {"file": p.name, "bytes": graph_bytes(p), "fp32_graph": g in reused} for g, p in paths.items()}


def report_figures(report: dict) -> dict:
    """What a tier's quantise_<tier>.json measured in its own process: peak RSS and seconds per graph."""
    graphs = report.get("graphs", {})
    return {
        "peak_rss_mib": report.get("peak_rss_mib"),
        "graph_seconds": {g: r.get("seconds") for g, r in graphs.items()},
    }


def quantise_tier(args: argparse.Namespace, tier: str) -> dict:
    """Quantise ``tier`` in a child (or reuse its report with --skip-quantise)."""
    report_path = args.bundle / f"quantise_{tier}.json"
    if args.skip_quantise:
        if not report_path.is_file():
            return {"status": "missing", "detail": f"{report_path.name} absent and --skip-quantise given"}
        report = json.loads(report_path.read_text())
        return {"status": "reused", "wall_s": report.get("seconds"), **report_figures(report)}
    cmd = [sys.executable, "-m", "granite_onnx.cli", "quantise", "--bundle", str(args.bundle)]
    cmd += ["--tier", tier, "--clips", str(args.clips), "--threads", str(args.threads)]
    cmd += ["--force"]  # a benchmark times the work: an up-to-date tier must not be skipped
    print(f"quantising {tier}: {' '.join(cmd)}", flush=True)
    child = run_child(cmd)
    print(child.stdout, end="", flush=True)
    doc = {"wall_s": child.wall_s, "peak_rss_mib": child.peak_rss_mib}
    if not child.ok:
        return {"status": "failed", **doc, **child.failure()}
    report = json.loads(report_path.read_text())
    figures = report_figures(report)
    return {
        "status": "ok",
        **doc,  # the child's wall time and own peak RSS (wait4)
        "report_seconds": report.get("seconds"),
        "report_peak_rss_mib": figures["peak_rss_mib"],
        "graph_seconds": figures["graph_seconds"],
    }


def time_graph(args: argparse.Namespace, graph: str, tier: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", graph, tier or FP32, "--bundle", str(args.bundle)]
    cmd += ["--threads", str(args.threads), "--tokens", str(args.tokens), "--past", str(args.past)]
    cmd += ["--clips", str(args.clips), "--work", str(args.work)]
    child = run_child(cmd)
    if not child.ok:
        return {"status": "failed", "peak_rss_mib": child.peak_rss_mib, **child.failure()}
    return {"status": "ok", **child.last_json(), "peak_rss_mib": child.peak_rss_mib, "wall_s": child.wall_s}


def progress(tier: str, graph: str, doc: dict) -> None:
    """One JSON line per timed session as it finishes (without the stderr of a failure)."""
    brief = {k: v for k, v in doc.items() if k != "stderr_tail"}
    print(json.dumps({"tier": tier, "graph": graph, **brief}), flush=True)


def error_vs_fp32(outputs: Path, graph: str, tier: str) -> dict:
    """Max and mean |tier - FP32| of the graph's timed output (encoder embeddings on the 30 s clip;
    decode_step logits of the first step over the seeded past), and whether the logits' argmax agrees."""
    want, got = outputs / f"{graph}-{FP32}.npy", outputs / f"{graph}-{tier}.npy"
    if not (want.is_file() and got.is_file()):
        return {}
    a, b = np.load(want), np.load(got)
    doc = {"max_abs_error": float(np.abs(a - b).max()), "mean_abs_error": float(np.abs(a - b).mean())}
    if graph == DECODE_STEP:
        doc["argmax_agrees"] = bool((a.argmax(-1) == b.argmax(-1)).all())
    return doc


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def measure(args: argparse.Namespace, fp32_sizes: dict[str, dict]) -> dict:
    """Quantise every tier, then time FP32 and every tier side by side."""
    fp32_total = sum(s["bytes"] for s in fp32_sizes.values())
    tiers: dict[str, dict] = {}
    for tier in args.tier:
        tiers[tier] = {"quantise": quantise_tier(args, tier)}
    fp32 = {"graphs": fp32_sizes, "total_bytes": fp32_total}
    for graph in TIMED:
        fp32[graph] = time_graph(args, graph, None)
        if fp32[graph]["status"] == "ok":
            fp32[graph]["x_fp32"] = 1.0
        progress(FP32, graph, fp32[graph])
    for tier, doc in tiers.items():
        if doc["quantise"]["status"] in ("failed", "missing"):
            continue
        sizes = graph_sizes(args.bundle, tier)
        if sizes is None:
            doc["quantise"]["status"] = "incomplete"
            continue
        for g, s in sizes.items():
            s["x_fp32"] = ratio(s["bytes"], fp32_sizes[g]["bytes"])
        doc["graphs"] = sizes
        doc["total_bytes"] = sum(s["bytes"] for s in sizes.values())
        doc["total_x_fp32"] = ratio(doc["total_bytes"], fp32_total)
        doc["fp32_graphs"] = [g for g, s in sizes.items() if s["fp32_graph"]]
        for graph in TIMED:
            key = "ms_per_token" if graph == DECODE_STEP else "seconds"
            if sizes[graph]["fp32_graph"]:
                doc[graph] = {"status": "same graph as FP32", key: fp32[graph].get(key), "x_fp32": 1.0}
                continue
            doc[graph] = time_graph(args, graph, tier)
            doc[graph]["x_fp32"] = ratio(doc[graph].get(key), fp32[graph].get(key))
            doc[graph].update(error_vs_fp32(args.work / "outputs", graph, tier))
            progress(tier, graph, doc[graph])
    return {"fp32": fp32, "tiers": tiers}


def cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.processor()


def machine_facts(threads: int) -> dict:
    import onnx
    import onnxruntime

    from granite_onnx.runtime.cpu import current_cpu

    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_kernels": current_cpu().to_json(),  # the ISA flags and integer kernel the figures hold for
        "threads": threads,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# --- the table ---------------------------------------------------------------------------------------

COLUMNS = (  # title, width, alignment
    ("tier", 6, "<"),
    ("graph", 20, "<"),
    ("bytes", 10, ">"),
    ("x FP32", 6, ">"),
    ("quant s", 8, ">"),
    ("quant RSS GiB", 13, ">"),
    ("decode ms/tok", 13, ">"),
    ("x FP32", 6, ">"),
    ("encoder s", 9, ">"),
    ("x FP32", 6, ">"),
    ("run RSS GiB", 11, ">"),
    ("max |x-FP32|", 12, ">"),
)


def line(cells: list[str]) -> str:
    return " ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, COLUMNS, strict=True)).rstrip()


def size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def gib(mib: float | None) -> float | None:
    return mib / 1024 if mib else None


def timed_cells(graph: str, timed: dict | None) -> list[str]:
    """decode ms/tok, x FP32, encoder s, x FP32, run RSS GiB, max error vs FP32 for one graph row."""
    if not timed:
        return [""] * 6
    status = timed.get("status")
    if status == "failed":
        value, x, rss = "FAILED", "", num(gib(timed.get("peak_rss_mib")), ".2f")
    else:
        value = num(timed.get("ms_per_token" if graph == DECODE_STEP else "seconds"), ".3f")
        x = num(timed.get("x_fp32"), ".3f")
        rss = "= FP32" if status == "same graph as FP32" else num(gib(timed.get("peak_rss_mib")), ".2f")
    err = num(timed.get("max_abs_error"), ".2e")
    if timed.get("argmax_agrees") is False:
        err += " (argmax differs)"
    cells = [value, x, "", ""] if graph == DECODE_STEP else ["", "", value, x]
    return [*cells, rss, err]


def failure_lines(doc: dict | None, count: int = 5) -> list[str]:
    return (doc.get("stderr_tail") or [])[-count:] if doc and doc.get("status") == "failed" else []


def print_table(result: dict) -> None:
    m, s, fp32 = result["machine"], result["settings"], result["fp32"]
    print(
        f"\nmachine: {m['cpu_count']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM; {m['threads']} threads; "
        f"onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, numpy {m['numpy']}, python {m['python']}; "
        f"{m['date']}"
    )
    print(
        f"bundle {result['bundle']}\ndecode_step: median of {s['tokens']} steps after {DECODE_WARMUP} "
        f"warm-up, random past of {s['past']}; encoder: best of {ENCODER_REPEATS} on "
        f"{ENCODER_SECONDS:.0f} s of {ENCODER_CLIP}\n"
    )
    header = line([title for title, _, _ in COLUMNS])
    print(header + "\n" + "-" * len(header))
    for g, info in fp32["graphs"].items():
        print(line([FP32, g, size(info["bytes"]), "1.000", "", "", *timed_cells(g, fp32.get(g))]))
    print(line([FP32, "(bundle)", size(fp32["total_bytes"]), "1.000", *[""] * 8]))
    notes = [f"fp32 {g} timing failed: {ln}" for g in TIMED for ln in failure_lines(fp32.get(g))]
    for tier, doc in result["tiers"].items():
        q = doc["quantise"]
        if "graphs" not in doc:
            why = q.get("detail") or f"exit {q.get('exit')}" + (f" ({q['signal']})" if "signal" in q else "")
            if q.get("wall_s") is not None:
                why += f" after {q['wall_s']:.1f} s, peak RSS {gib(q.get('peak_rss_mib')) or 0:.2f} GiB"
            print(f"{tier:6s} quantise {q['status']}: {why}")
            notes += [f"{tier} quantise stderr: {ln}" for ln in failure_lines(q)]
            continue
        for g, info in doc["graphs"].items():
            reused = info["fp32_graph"]
            qs = "" if reused else num(q.get("graph_seconds", {}).get(g), ".1f")
            cells = [
                tier,
                f"{g}=FP32" if reused else g,
                size(info["bytes"]),
                num(info["x_fp32"], ".3f"),
                qs,
                "",
            ]
            print(line(cells + timed_cells(g, doc.get(g))))
        total = [tier, "(bundle)", size(doc["total_bytes"]), num(doc["total_x_fp32"], ".3f")]
        total += [num(q.get("wall_s"), ".1f"), num(gib(q.get("peak_rss_mib")), ".2f")]
        print(line(total + [""] * 6))
        notes += [f"{tier} {g} timing failed: {ln}" for g in TIMED for ln in failure_lines(doc.get(g))]
    print(
        "\n(bundle): every graph the tier runs, the FP32 ones it reuses included (marked =FP32); its\n"
        "quant s and quant RSS are the quantise process's wall time and own peak RSS; run RSS is the\n"
        "peak RSS of the process that timed that graph's session."
    )
    for tier, doc in result["tiers"].items():
        if "total_bytes" in doc:
            print(
                f"tier {tier}: bundle {size(doc['total_bytes'])} = {doc['total_x_fp32']:.3f} x FP32 "
                f"{size(fp32['total_bytes'])} (FP32 graphs reused: {', '.join(doc['fp32_graphs']) or 'none'})"
            )
    for note in notes:
        print(note)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/granite-full"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--tier", action="append", choices=list(TIERS), help="Repeatable; default all.")
    parser.add_argument("--clips", type=Path, default=Path("clips"))
    parser.add_argument("--threads", type=positive, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=positive, default=16, help="Decode steps timed (after 2 warm-up).")
    parser.add_argument("--past", type=positive, default=320, help="Synthetic past length of decode_step.")
    parser.add_argument("--skip-quantise", action="store_true", help="Reuse the tiers already in the bundle.")
    parser.add_argument("--bundle", type=Path, help="A complete FP32 bundle to use instead of building one.")
    parser.add_argument(
        "--json", type=Path, help="Where to write the results (default <work>/quantise_full.json)."
    )
    parser.add_argument("--child", nargs=2, metavar=("GRAPH", "TIER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    args.tier = list(dict.fromkeys(args.tier or TIERS))
    if not (args.clips / ENCODER_CLIP).is_file():  # before an hour of export and quantisation
        sys.exit(f"{args.clips / ENCODER_CLIP} is missing: the encoder is timed on it (give --clips DIR)")
    if args.bundle is None:
        args.bundle = build_full_bundle(args.work, args.config)
    args.bundle = args.bundle.resolve()
    args.clips = args.clips.resolve()
    fp32_sizes = graph_sizes(args.bundle, None)
    if fp32_sizes is None:
        sys.exit(f"{args.bundle} lacks an FP32 graph: give a complete bundle")
    result = {
        "bundle": str(args.bundle),
        "machine": machine_facts(args.threads),
        "settings": {
            "tiers": args.tier,
            "threads": args.threads,
            "tokens": args.tokens,
            "past": args.past,
            "decode_warmup": DECODE_WARMUP,
            "encoder_clip": ENCODER_CLIP,
            "encoder_audio_s": ENCODER_SECONDS,
            "encoder_repeats": ENCODER_REPEATS,
            "clips": str(args.clips),
            "skip_quantise": args.skip_quantise,
        },
        **measure(args, fp32_sizes),
    }
    print_table(result)
    out = args.json or args.work / "quantise_full.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
