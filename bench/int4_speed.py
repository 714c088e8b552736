"""Full-size 4-bit decode: each block size's decode_step against FP32, interleaved, with its bandwidth bound.

For every ``--blocks`` size a tier ``int4w-rtn-b<block>`` holding only a 4-bit decode_step is written into the
FP32 bundle (round to nearest: the speed of a 4-bit graph does not depend on how its levels were chosen), then
a child process opens FP32's and that tier's decode_step and alternates their steps on one seeded cache of
``--past`` positions (drift hits both alike); the figure is the median over ``--steps`` rounds. Each tier's
bound is the weight bytes its decode step reads over the copy bandwidth measured in this run (read + written,
as bench/scale.py counts it). onnxruntime fuses the blocked DequantizeLinear -> MatMul into MatMulNBits at
load; its default accuracy level (int8 activations) is what every consumer gets and what is timed.

    python bench/int4_speed.py --bundle /tmp/granite-full/bundle --json bench/results/int4_speed_full.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from decode_cache import SETTLE_S  # noqa: E402
from quantise_full import machine_facts  # noqa: E402
from scale import copy_bandwidth, decode_weight_bytes  # noqa: E402


def tier_name(block: int) -> str:
    return f"int4w-rtn-b{block}"


def write_tier(bundle: Path, block: int) -> dict:
    """The 4-bit decode_step of ``block`` (skipped when its stamp says it is there)."""
    from granite_onnx.quantise import int4
    from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle
    from granite_onnx.quantise.tiers import TIERS

    tier = replace(
        TIERS["int4w"],
        name=tier_name(block),
        graphs=("decode_step",),
        write_graph=int4.writer("rtn", block),
    )
    start = time.perf_counter()
    report = quantise_bundle(bundle, tier, QuantiseOptions(), progress=print)
    (graph,) = report.graphs
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "skipped": report.skipped,
        "bytes_before": graph.bytes_before,
        "bytes_after": graph.bytes_after,
        "peak_rss_mib": report.peak_rss_mib,
    }


def child(bundle: Path, tier: str, past: int, steps: int, threads: int) -> dict:
    """In a process of its own: FP32 and ``tier`` decode_step, interleaved; their medians."""
    from granite_onnx.runtime.pipeline import SpeechPipeline

    pipes = {
        name: SpeechPipeline(
            bundle, t, threads=threads, graphs=("decode_step",), kv_cache="concat", decode_batch=None
        )
        for name, t in (("fp32", None), (tier, tier))
    }
    dims = pipes["fp32"].bundle.dims
    rng = np.random.default_rng(0)
    kv = [
        rng.standard_normal((1, dims.kv_heads, past, dims.head_dim), np.float32)
        for _ in range(2 * dims.num_layers)
    ]
    feeds = pipes["fp32"].step_feeds(np.array([[1]], np.int64), kv)
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(steps + 3):
        for name, pipe in pipes.items():
            time.sleep(SETTLE_S)  # the other sessions' threads stop spinning first (see decode_cache.py)
            start = time.perf_counter()
            pipe.sessions["decode_step"].run(None, feeds)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[3:]) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("/tmp/granite-full/bundle"))
    parser.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--past", type=int, default=330)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.bundle, args.child, args.past, args.steps, args.threads)))
        return
    bandwidth = copy_bandwidth(args.threads)
    fp32_bytes = decode_weight_bytes(args.bundle)
    result = {
        "machine": machine_facts(args.threads),
        "bundle": str(args.bundle),
        "past": args.past,
        "steps": args.steps,
        "copy_gb_per_s": round(bandwidth / 1e9, 2),
        "fp32_decode_weight_bytes": fp32_bytes,
        "fp32_bound_ms": round(fp32_bytes / (2 * bandwidth) * 1e3, 2),
        "blocks": {},
    }
    for block in args.blocks:
        written = write_tier(args.bundle, block)
        tier = tier_name(block)
        command = [
            sys.executable,
            __file__,
            "--bundle",
            str(args.bundle),
            "--child",
            tier,
            "--past",
            str(args.past),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        ms = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        weights = decode_weight_bytes(args.bundle, tier)
        bound = weights / (2 * bandwidth) * 1e3
        result["blocks"][block] = {
            **written,
            "decode_weight_bytes": weights,
            "fp32_ms": round(ms["fp32"], 2),
            "int4_ms": round(ms[tier], 2),
            "fp32_over_int4": round(ms["fp32"] / ms[tier], 2),
            "bound_ms": round(bound, 2),
            "int4_over_bound": round(ms[tier] / bound, 2),
            "bytes_ratio_to_fp32": round(weights / fp32_bytes, 3),
        }
        print(block, result["blocks"][block], flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
