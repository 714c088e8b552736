"""Benchmark: export each graph of a full-size random-weight Granite Speech model; time and peak RSS.

A benchmark, never a test: the 4.1-2b shape (2.3 B parameters, 9.25 GB of FP32 weights) needs about
17 GiB of memory per LLM graph. Each graph is exported in its own process so its peak RSS (from the
kernel's accounting, ``ru_maxrss``) is its own; the export gate (onnxruntime vs PyTorch at two sizes)
runs as in a real export unless ``--no-check``.

    python bench/export_full.py --config ../shared/configs/granite-speech-4.1-2b.json --work /tmp/full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GRAPHS = ("encoder", "prompt_encode", "decode_step")


def make_checkpoint(config_path: Path, folder: Path, seed: int = 0) -> None:
    """Random weights in the config's shape, saved with ``save_pretrained`` (safetensors)."""
    import torch
    from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    raw = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
    config = GraniteSpeechConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = GraniteSpeechForConditionalGeneration(config).to(torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    print(
        json.dumps(
            {
                "checkpoint": str(folder),
                "parameters": params,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def export_one(checkpoint: Path, graph: str, out_dir: Path, check: bool) -> None:
    """Child process: load the checkpoint, export one graph, print time and this process's peak RSS."""
    import torch
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_onnx.export.stage import ExportOptions, export_graph
    from granite_onnx.specs import ModelDims, graph_specs

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    model = GraniteSpeechForConditionalGeneration.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    loaded = time.perf_counter() - start
    dims = ModelDims.from_config(model.config.to_dict())
    out_dir.mkdir(parents=True, exist_ok=True)
    report = export_graph(model, graph_specs(dims)[graph], dims, out_dir, ExportOptions(check=check))
    files = {p.name: p.stat().st_size for p in out_dir.glob(f"{graph}.onnx*")}
    print(
        json.dumps(
            {
                "graph": graph,
                "load_s": round(loaded, 1),
                "export_and_check_s": report.seconds,
                "max_abs_error": report.max_abs_error,
                "nodes": report.nodes,
                "files": files,
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            }
        )
    )


def export_children(args: argparse.Namespace, checkpoint: Path) -> list[dict]:
    """One child per graph, ``args.jobs`` at a time (TorchScript export is mostly one thread of Python, so
    a 16-core box exports the three graphs in the time of the slowest); each child's peak RSS is its own."""
    from concurrent.futures import ThreadPoolExecutor

    def one(graph: str) -> dict:
        cmd = [sys.executable, __file__, "--work", str(args.work), "--child", str(checkpoint), graph]
        if args.no_check:
            cmd.append("--no-check")
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{graph}: failed with exit {out.returncode}\n{out.stderr[-2000:]}", file=sys.stderr)
            sys.exit(1)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        record["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(record), flush=True)
        return record

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        return list(pool.map(one, args.graph or GRAPHS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", type=Path, default=Path(__file__).parent / "configs" / "granite-speech-4.1-2b.json"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/granite-full"))
    parser.add_argument("--graph", action="append", choices=GRAPHS)
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument(
        "--jobs", type=int, default=1, help="Graphs exported at once (each its own process and peak RSS)."
    )
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "GRAPH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        export_one(Path(args.child[0]), args.child[1], args.work / "bundle", not args.no_check)
        return
    checkpoint = args.work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        make_checkpoint(args.config, checkpoint)
    results = export_children(args, checkpoint)
    print(f"\n{'graph':14s} {'wall s':>7s} {'peak RSS GiB':>12s} {'sidecar GiB':>11s}  max |onnx-torch|")
    for r in results:
        sidecar = r["files"].get(f"{r['graph']}.onnx_data", 0) / 2**30
        print(
            f"{r['graph']:14s} {r['wall_s']:7.1f} {r['peak_rss_gib']:12.2f} {sidecar:11.2f}  "
            f"{r['max_abs_error']}"
        )
    (args.work / "export_full.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
