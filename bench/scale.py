"""Benchmark: the runtime at the full 4.1-2b shape, both weight layouts and PyTorch side by side in one run.

A benchmark, never a test. What it measures, each run in its own process:

- peak RSS is each child's own ``VmHWM`` (its high-water resident set, file-backed weight pages included);
- the two layouts on disk: one sidecar per graph (the default, as published) and the shared layout
  (``export --layout shared``: prompt_encode and decode_step point their common LLM weights into one
  ``llm.shared.onnx_data``), made here from hard links of the per-graph bundle;
- a copy bandwidth measured in this run, and from it the decode bandwidth bound: the weight bytes one
  decode step reads (every LLM and head weight once) divided by the memory traffic of the copy (bytes read
  plus bytes written per second: the bus carries both, and decode's traffic is reads alone);
- PyTorch eager FP32 end to end (encoder, prompt, a fixed number of greedy tokens, no early stop) and the
  ONNX pipeline the same way, per layout: per-graph with onnxruntime's weight pre-packing (a private copy
  of every MatMul weight per session) and shared with pre-packing off (weights stay memory-mapped, so the
  page cache holds the LLM once for both sessions);
- decode ms/token over the first and the last tokens of a long clip (no quadratic KV copying);
- every quantised tier the bundle has, decode against FP32 with the tokens compared.

    python bench/scale.py --work /tmp/granite-full            # exports the full-size bundle if missing
    python bench/scale.py --bundle out/trained --model trained --tier int8 --seconds 5   # small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from quantise_full import DEFAULT_CONFIG, ENCODER_CLIP, REPO, build_full_bundle, machine_facts, run_child

FIRST_LAST = 8  # tokens averaged at the start and at the end of a decode


# --- in the child ------------------------------------------------------------------------------------------


def status_mib(field: str, source: str = "/proc/self/status") -> float:
    """A field of /proc/self/status (VmRSS, RssAnon, RssFile, VmHWM) or, with ``source``
    /proc/self/smaps_rollup, Pss, in MiB; 0 where the kernel has none."""
    path = Path(source)
    for line in path.read_text().splitlines() if path.is_file() else ():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def memory_now() -> dict[str, float]:
    """Resident memory now: RSS split into anonymous and file-backed pages, and PSS (a page mapped twice
    by this process counts once, as physical memory does)."""
    doc = {k: status_mib(k) for k in ("VmRSS", "RssAnon", "RssFile")}
    return {**doc, "Pss": status_mib("Pss", "/proc/self/smaps_rollup")}


def clip_features(clip: Path, seconds: float, features):
    """``clip`` tiled or cut to ``seconds`` (np.resize repeats it), as the stacked log-mel both sides get."""
    from granite_onnx.runtime.audio import load_audio
    from granite_onnx.runtime.features import log_mel

    rate = features.sampling_rate
    audio = np.resize(load_audio(clip, rate), int(seconds * rate))
    return log_mel(audio, features)[None]


def onnx_run(args: argparse.Namespace) -> dict:
    """The ONNX pipeline end to end: a short warm-up, then encoder, prompt and ``tokens`` greedy steps."""
    from granite_onnx.runtime.pipeline import SpeechPipeline

    start = time.perf_counter()
    pipe = SpeechPipeline(
        args.bundle, args.tier, threads=args.threads, prepack=not args.mapped, share_weights=not args.mapped
    )
    load_s = time.perf_counter() - start
    loaded = memory_now()
    features = clip_features(args.clip, args.seconds, pipe.bundle.features)

    def once(tokens: int, features: np.ndarray) -> dict:
        t0 = time.perf_counter()
        embeds = pipe.audio_embeds(features)
        t1 = time.perf_counter()
        ids = pipe.prompt_ids(embeds.shape[1])
        logits, kv = pipe.prompt(ids, embeds)
        t2 = time.perf_counter()
        token, generated, steps = int(logits[0].argmax()), [], []
        decoder = pipe.start_decode(kv, ids.shape[1] + tokens)  # the runtime's default: the static cache
        for _ in range(tokens):
            generated.append(token)
            s = time.perf_counter()
            logits = decoder.step(np.array([[token]], np.int64))
            steps.append(time.perf_counter() - s)
            token = int(logits[0].argmax())
        return {
            "encoder_s": t1 - t0,
            "prompt_s": t2 - t1,
            "prompt_tokens": int(ids.shape[1]),
            "steps_s": steps,
            "tokens": generated,
            "end_to_end_s": time.perf_counter() - t0,
        }

    once(2, features[:, :250])  # first-run allocations and thread start-up (on 5 s) are not what is timed
    run = once(args.tokens, features)
    steps = run.pop("steps_s")
    k = min(FIRST_LAST, len(steps))
    return {
        **run,
        "load_s": load_s,
        "decode_ms_per_token": statistics.mean(steps) * 1e3,
        "decode_ms_first": statistics.mean(steps[:k]) * 1e3,
        "decode_ms_last": statistics.mean(steps[-k:]) * 1e3,
        "rss_after_load_mib": loaded,
        "rss_after_run_mib": memory_now(),
    }


def pytorch_run(args: argparse.Namespace) -> dict:
    """transformers' model end to end on the same features: prompt forward (encoder inside), cached greedy
    steps (bench/runtime.py's loop), after the same kind of warm-up."""
    import torch
    from runtime import torch_decode
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_onnx.runtime.bundle import Bundle
    from granite_onnx.runtime.prompt import PromptBuilder

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    # transformers' defaults (SDPA attention), as a user runs the model; the full-size random checkpoint
    # has no tokenizer, so the parity loader (which insists on one) is not used here.
    model = GraniteSpeechForConditionalGeneration.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    bundle = Bundle.open(args.bundle)
    features = clip_features(args.clip, args.seconds, bundle.features)
    with torch.no_grad():
        tokens = model.get_audio_features(torch.from_numpy(features), return_dict=True).pooler_output.shape[1]
    ids = np.array([PromptBuilder(bundle.folder).input_ids(tokens)], np.int64)
    torch_decode(model, ids, features, 2)
    t0 = time.perf_counter()
    prompt_s, ms, generated = torch_decode(model, ids, features, args.tokens)
    end_to_end_s = time.perf_counter() - t0
    with torch.no_grad():  # the encoder alone, once more, to split prompt_s as the ONNX runs are split
        t1 = time.perf_counter()
        model.get_audio_features(torch.from_numpy(features), return_dict=True)
        encoder_s = time.perf_counter() - t1
    return {
        "attn_implementation": model.config._attn_implementation,
        "torch": torch.__version__,
        "load_s": load_s,
        "prompt_s": prompt_s,  # the encoder runs inside the prompt forward
        "encoder_only_s": encoder_s,  # timed apart, after the run: prompt_s - this ~ the LLM prefill
        "prompt_tokens": int(ids.shape[1]),
        "decode_ms_per_token": ms,
        "tokens": generated,
        "end_to_end_s": end_to_end_s,
    }


# --- in the parent -----------------------------------------------------------------------------------------


def copy_bandwidth(threads: int, gib: float = 2.0, repeats: int = 3) -> float:
    """Bytes per second copied by ``threads`` threads at once, each a slice of a large numpy array (numpy
    releases the GIL while copying), best of ``repeats``: one thread alone does not saturate the memory of
    a many-core machine (10.9 GB/s on the 16-core box, where decode streams far faster)."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(int(gib * 2**30) // 4, np.float32)
    b = np.empty_like(a)
    cuts = np.linspace(0, a.size, threads + 1).astype(int)
    slices = [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    with ThreadPoolExecutor(threads) as pool:

        def copy() -> None:
            list(pool.map(lambda s: np.copyto(b[s], a[s]), slices))

        copy()  # first touch of b's pages is not bandwidth
        best = min(_timed(copy) for _ in range(repeats))
    return a.nbytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def layout_bytes(folder: Path, tier: str | None = None) -> dict:
    """Bytes on disk of a tier's graphs and every weight file they read, each file counted once."""
    from granite_onnx.runtime.bundle import resolve_graphs
    from granite_onnx.sidecar import external_files

    files = set()
    for path in resolve_graphs(folder, tier)[0].values():
        files |= {path, *(f for f in external_files(path) if f.is_file())}
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def decode_weight_bytes(folder: Path, tier: str | None = None) -> int:
    """Weight bytes one decode step reads: every external tensor of decode_step once, except tables that
    only ``Gather`` reads (a step reads one row of those: the embedding, as int8 rows in int8w and int4w)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from granite_onnx.runtime.bundle import resolve_graphs
    from granite_onnx.sidecar import graph_tensors

    path = resolve_graphs(folder, tier)[0]["decode_step"]
    model = onnx.load(str(path), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, set()).add("rows" if node.op_type == "Gather" and i == 0 else "all")
    return sum(
        ExternalDataInfo(t).length or 0
        for t in graph_tensors(model.graph)
        if uses_external_data(t) and readers.get(t.name) != {"rows"}
    )


def shared_copy(bundle: Path, dest: Path) -> dict:
    """``dest``: the bundle's FP32 files, then rewritten in the shared layout (the LLM graphs' files start as
    hard links, which the rewrite replaces, so no 14 GiB copy)."""
    from granite_onnx.layout import share_llm_weights

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    rewritten = {f"{g}.onnx{s}" for g in ("prompt_encode", "decode_step") for s in ("", "_data")}
    for path in bundle.iterdir():
        if path.is_file() and not path.name.startswith("."):
            if path.name in rewritten:  # share_weights writes new files and renames: the links go again
                os.link(path, dest / path.name)
            else:  # a lasting second link would make onnx refuse the original's external data (quantise)
                shutil.copyfile(path, dest / path.name)
    start = time.perf_counter()
    shared = share_llm_weights(dest)
    return {**shared, "seconds": round(time.perf_counter() - start, 1)}


def child(args: argparse.Namespace, kind: str, bundle: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--bundle", str(bundle), "--clip", str(args.clip)]
    cmd += ["--threads", str(args.threads), "--tokens", str(args.tokens), "--seconds", str(args.seconds)]
    cmd += ["--checkpoint", str(args.checkpoint), "--copy-gib", str(args.copy_gib), *extra]
    print(f"  {kind} {bundle.name} {' '.join(extra)}", file=sys.stderr, flush=True)
    done = run_child(cmd)
    if not done.ok:
        return {"failed": done.failure()}
    doc = done.last_json()
    peak = doc.pop("vm_hwm_mib")
    return {**doc, "peak_rss_mib": peak, "wall_s": done.wall_s}


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def measure(args: argparse.Namespace) -> dict:
    bundle = args.bundle
    shared_dir = args.work / "bundle-shared"
    result: dict = {"machine": machine_facts(args.threads), "audio_s": args.seconds, "tokens": args.tokens}
    result["layouts"] = {"per-graph": layout_bytes(bundle)}
    result["shared_layout"] = shared_copy(bundle, shared_dir)
    result["layouts"]["shared"] = layout_bytes(shared_dir)
    save(args, result)
    # In a child: a process's peak RSS is inherited by the programs it starts (Linux counts the parent's
    # high-water mark at exec), so this process never holds anything large.
    bandwidth = child(args, "bandwidth", bundle)["bytes_per_s"]
    weights = decode_weight_bytes(bundle)
    result["bandwidth"] = {
        "copy_gb_per_s": round(bandwidth / 1e9, 2),  # bytes copied per second
        "traffic_gb_per_s": round(2 * bandwidth / 1e9, 2),  # read + written
        "decode_weight_bytes": weights,
        "bound_ms_per_token": round(weights / (2 * bandwidth) * 1e3, 2),
    }
    runs = result["runs"] = {}
    if not args.skip_pytorch:
        runs["pytorch"] = child(args, "pytorch", bundle)
        save(args, result)
    runs["onnx-shared"] = child(args, "onnx", shared_dir)
    save(args, result)
    if args.mapped_run:
        runs["onnx-shared-mapped"] = child(args, "onnx", shared_dir, "--mapped")
        save(args, result)
    runs["onnx-per-graph"] = child(args, "onnx", bundle)
    save(args, result)
    for tier in args.tier:
        runs[f"onnx-{tier}"] = child(args, "onnx", bundle, "--tier", tier)
        save(args, result)
    if args.long_seconds:
        long = [*(("--seconds", str(args.long_seconds)))]
        runs["onnx-long-shared"] = child(args, "onnx", shared_dir, *long)
    result["figures"] = figures(result)
    save(args, result)
    return result


def figures(result: dict) -> dict:
    """The ratios the issue asks for, from what was measured above."""
    runs = result["runs"]
    torch_run, fp32 = runs.get("pytorch", {}), runs.get("onnx-per-graph", {})
    shared = runs.get("onnx-shared", {})
    unique = result["layouts"]["shared"]["bytes"]
    out = {
        "shared_over_per_graph_bytes": ratio(unique, result["layouts"]["per-graph"]["bytes"]),
        "onnx_e2e_over_pytorch": ratio(fp32.get("end_to_end_s"), torch_run.get("end_to_end_s")),
        "onnx_shared_e2e_over_pytorch": ratio(shared.get("end_to_end_s"), torch_run.get("end_to_end_s")),
        # where the end-to-end ratio comes from: encoder, LLM prefill (PyTorch's prompt minus its encoder)
        "onnx_encoder_over_pytorch": ratio(fp32.get("encoder_s"), torch_run.get("encoder_only_s")),
        "onnx_prefill_over_pytorch": ratio(
            fp32.get("prompt_s"),
            torch_run["prompt_s"] - torch_run["encoder_only_s"] if "encoder_only_s" in torch_run else None,
        ),
        "onnx_decode_over_pytorch": ratio(
            fp32.get("decode_ms_per_token"), torch_run.get("decode_ms_per_token")
        ),
        "fp32_decode_over_bound": ratio(
            fp32.get("decode_ms_per_token"), result["bandwidth"]["bound_ms_per_token"]
        ),
        "shared_decode_over_bound": ratio(
            shared.get("decode_ms_per_token"), result["bandwidth"]["bound_ms_per_token"]
        ),
        "per_graph_peak_rss_over_unique_weights": ratio(fp32.get("peak_rss_mib", 0) * 2**20, unique),
        "shared_peak_rss_over_unique_weights": ratio(shared.get("peak_rss_mib", 0) * 2**20, unique),
        "per_graph_pss_over_unique_weights": ratio(
            fp32.get("rss_after_run_mib", {}).get("Pss", 0) * 2**20, unique
        ),
        "shared_pss_over_unique_weights": ratio(
            shared.get("rss_after_run_mib", {}).get("Pss", 0) * 2**20, unique
        ),
        "tiers": {},
    }
    for name, run in runs.items():
        tier = name.removeprefix("onnx-")
        if name.startswith("onnx-") and tier not in ("per-graph", "shared", "shared-mapped", "long-shared"):
            out["tiers"][tier] = {
                "fp32_decode_over_tier_decode": ratio(
                    fp32.get("decode_ms_per_token"), run.get("decode_ms_per_token")
                ),
                "tokens_equal_fp32": run.get("tokens") == fp32.get("tokens"),
            }
    long = runs.get("onnx-long-shared", {})
    out["long_last_over_first"] = ratio(long.get("decode_ms_last"), long.get("decode_ms_first"))
    return out


def save(args: argparse.Namespace, result: dict) -> None:
    """Written after every step, so a run stopped at its time limit keeps what it measured."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict) -> None:
    m = result["machine"]
    print(
        f"\n{m['cpu']} x{m['cpu_count']}, {m['threads']} threads, {m['ram_gib']} GiB,"
        f" onnxruntime {m['onnxruntime']}"
    )
    print(f"{result['audio_s']} s of audio, {result['tokens']} greedy tokens")
    for name, doc in result["layouts"].items():
        print(f"layout {name:10s} {doc['bytes'] / 2**30:7.2f} GiB on disk in {doc['files']} files")
    bw = result["bandwidth"]
    print(
        f"copy {bw['copy_gb_per_s']} GB/s ({bw['traffic_gb_per_s']} GB/s read + written);"
        f" decode reads {bw['decode_weight_bytes'] / 2**30:.2f} GiB"
        f" -> bound {bw['bound_ms_per_token']} ms/token"
    )
    print(
        f"\n{'run':26s}"
        + "".join(f" {h:>8s}" for h in ("e2e s", "enc s", "prompt s", "ms/tok", "first", "last", "peak GiB"))
    )
    for name, r in result["runs"].items():
        if "failed" in r:
            print(f"{name:26s} failed: {r['failed']}")
            continue
        cells = [r.get("end_to_end_s"), r.get("encoder_s", r.get("encoder_only_s")), r.get("prompt_s")]
        cells += [r.get(k) for k in ("decode_ms_per_token", "decode_ms_first", "decode_ms_last")]
        text = " ".join(f"{c:8.2f}" if c is not None else f"{'-':>8s}" for c in cells)
        print(f"{name:26s} {text} {r['peak_rss_mib'] / 1024:8.2f}")
    print()
    for key, value in result["figures"].items():
        print(f"{key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/granite-full"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--bundle", type=Path, help="An FP32 bundle (default: <work>/bundle, exported if missing)."
    )
    parser.add_argument("--checkpoint", type=Path, help="Its checkpoint (default: <work>/checkpoint).")
    parser.add_argument("--model", help="Or a fixture name for the checkpoint (tiny, trained).")
    parser.add_argument("--clip", type=Path, default=REPO / "clips" / ENCODER_CLIP)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--long-seconds", type=float, default=90.0, help="0 skips the long-audio run.")
    parser.add_argument("--tier", action="append", default=[], help="Also time this quantised tier.")
    parser.add_argument("--skip-pytorch", action="store_true")
    parser.add_argument(
        "--jobs", type=int, default=1, help="Graphs exported at once when the bundle is missing."
    )
    parser.add_argument(
        "--copy-gib", type=float, default=2.0, help="Size of the bandwidth copy (two arrays)."
    )
    parser.add_argument("--no-check", action="store_true", help="Export the bundle without the PyTorch gate.")
    parser.add_argument("--json", type=Path, help="Write the results here (after every step).")
    parser.add_argument("--child", choices=("onnx", "pytorch", "bandwidth"), help=argparse.SUPPRESS)
    parser.add_argument("--mapped", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--mapped-run",
        action="store_true",
        help="Also time the shared layout with pre-packing off and each session mapping the file itself.",
    )
    args = parser.parse_args()
    if args.child:
        args.tier = args.tier[0] if args.tier else None
        runs = {
            "onnx": onnx_run,
            "pytorch": pytorch_run,
            "bandwidth": lambda a: {"bytes_per_s": copy_bandwidth(a.threads, a.copy_gib)},
        }
        # VmHWM: this program's own peak (wait4's ru_maxrss also counts the parent's peak, inherited at exec)
        print(json.dumps({**runs[args.child](args), "vm_hwm_mib": status_mib("VmHWM")}))
        return
    if args.model:
        from granite_onnx.checkpoint import resolve_checkpoint

        args.checkpoint = resolve_checkpoint(None, args.model).path
    if args.bundle is None:
        args.bundle = build_full_bundle(args.work, args.config, args.jobs, check=not args.no_check)
    args.checkpoint = args.checkpoint or args.work / "checkpoint"
    args.work.mkdir(parents=True, exist_ok=True)
    print_table(measure(args))


if __name__ == "__main__":
    main()
