"""Benchmark: decode_step per KV cache and batch form, at two past lengths, interleaved in one process.

Variants (all from the bundle's own decode_step file, rewritten at load by ``runtime/kv_cache.py``):
``concat`` (the file as it is: every step copies the past into a new present), ``static`` (ScatterND
into a preallocated cache bound in place, capacity = past + ``--budget``, what ``generate`` uses) and
``static-b1`` / ``concat-b1`` (the same with the batch fixed to 1 at load). Each variant's session is
open at once and their steps alternate on one seeded cache, at every ``--past``; the figure is the
median over ``--steps`` rounds; every past of every variant alternates within each round, so the growth
from the shortest to the longest past is measured side by side too. A static step rewinds to the same
position each round, so every round measures the step at that past. Then each variant is profiled
alone for one step (onnxruntime's profiler): the kernels it runs, and onnxruntime's run time less theirs.

    python bench/decode_cache.py --bundle /tmp/granite-full/bundle --tiers fp32 int4w \\
        --variants concat static-b1 --json bench/results/decode_cache_full.json

At full size an FP32 decode_step session holds about 8 GiB, so two FP32 variants fit in 24 GiB, not four.
Every figure is side by side in one run: the tiers, the variants and the pasts alternate in each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from quantise_full import machine_facts  # noqa: E402

VARIANTS = {  # name: (kv_cache, decode_batch)
    "concat": ("concat", None),
    "static": ("static", None),
    "concat-b1": ("concat", 1),
    "static-b1": ("static", 1),
}


class Runner:
    """One variant's decode_step session; :meth:`at` gives a step function at a past of given length."""

    def __init__(
        self, bundle: Path, tier: str | None, variant: str, threads: int, profile: str | None = None
    ):
        from granite_onnx.runtime.pipeline import SpeechPipeline

        kv_cache, batch = VARIANTS[variant]
        self.pipe = SpeechPipeline(
            bundle,
            tier,
            threads=threads,
            graphs=("decode_step",),
            kv_cache=kv_cache,
            decode_batch=batch,
            profile_prefix=profile,
        )
        self.session = self.pipe.sessions["decode_step"]
        self.static = kv_cache == "static"
        self.token = np.array([[1]], np.int64)

    def at(self, kv: list[np.ndarray], budget: int):
        """A step at ``len(kv)`` past positions, repeatable: a static step rewinds to the same position."""
        from granite_onnx.runtime.kv_cache import StaticDecoder

        past = kv[0].shape[2]
        if not self.static:
            feeds = self.pipe.step_feeds(self.token, kv)
            return lambda: self.session.run(None, feeds)
        dims = self.pipe.bundle.dims
        decoder = StaticDecoder(self.session, dims.num_layers, dims.vocab)
        decoder.start(kv, past + budget)

        def step() -> None:
            decoder.length = past
            decoder.mask[:, past:] = 0
            decoder.step(self.token)

        return step


# Each session has its own intra-op thread pool, whose threads spin for a while after a run. Stepping
# another session at once puts both pools on the 2 cores: measured at full size, two int4w sessions
# alternating back to back took 71-73 ms a step where one alone takes 52. A pause before each step (not
# timed) lets the last session's threads go to sleep.
SETTLE_S = 0.05


def random_cache(dims, past: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (1, dims.kv_heads, past, dims.head_dim)
    return [rng.standard_normal(shape, np.float32) for _ in range(2 * dims.num_layers)]


def timed(steps: dict[tuple[str, int], object], rounds: int) -> dict[tuple[str, int], float]:
    """Median ms of every (variant, past) step, all alternating in each round (drift hits all alike)."""
    times: dict[tuple[str, int], list[float]] = {key: [] for key in steps}
    for round_ in range(rounds + 3):
        for key, step in steps.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            step()
            if round_ >= 3:  # warm-up rounds not counted
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def profiled(bundle: Path, tier: str | None, variant: str, threads: int, kv, budget: int) -> dict:
    """One step under onnxruntime's profiler: the kernels it ran and their summed time."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(bundle, tier, variant, threads, profile=str(Path(tmp) / "p"))
        step = runner.at(kv, budget)
        for _ in range(3):
            step()
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    run = max((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = [
        e
        for e in events
        if e.get("cat") == "Node"
        and e["name"].endswith("_kernel_time")
        and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]
    ]
    kernel_ms = sum(e["dur"] for e in kernels) / 1e3
    # Both under the profiler (which slows every kernel a little): onnxruntime's own run time less the
    # kernels' is the time between kernels.
    return {
        "kernels": len(kernels),
        "kernel_ms": kernel_ms,
        "run_ms": run["dur"] / 1e3,
        "between_kernels_ms": run["dur"] / 1e3 - kernel_ms,
        "profiled_wall_ms": wall * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument(
        "--tiers", nargs="+", default=["fp32"], help="Tiers side by side (fp32 = the FP32 graphs)."
    )
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--past", type=int, nargs="+", default=[256, 1024])
    parser.add_argument(
        "--budget", type=int, default=200, help="New-token budget: the static cache's spare room."
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--bound", action="store_true", help="Measure copy bandwidth: each tier's step bound."
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    tiers = {name: None if name == "fp32" else name for name in args.tiers}
    bound = {}
    if args.bound:  # before the sessions hold their memory
        from scale import copy_bandwidth, decode_weight_bytes

        bandwidth = copy_bandwidth(args.threads)
        for t, tier in tiers.items():
            size = decode_weight_bytes(args.bundle, tier)
            bound[t] = {"read_bytes": size, "bound_ms": size / (2 * bandwidth) * 1e3}  # copy = read + write
        bound["copy_gb_per_s"] = bandwidth / 1e9
    names = [f"{t} {v}" for t in tiers for v in args.variants]
    runners = {
        f"{t} {v}": Runner(args.bundle, tier, v, args.threads)
        for t, tier in tiers.items()
        for v in args.variants
    }
    dims = next(iter(runners.values())).pipe.bundle.dims
    result = {
        "machine": machine_facts(args.threads),
        "bundle": str(args.bundle),
        "tiers": args.tiers,
        "variants": args.variants,
        "budget": args.budget,
        "steps": args.steps,
        "ms_per_step": {},
        "bound": bound,
    }
    caches = {past: random_cache(dims, past) for past in args.past}
    steps = {(n, past): runners[n].at(caches[past], args.budget) for past in args.past for n in names}
    ms = timed(steps, args.steps)
    for past in args.past:
        result["ms_per_step"][past] = {n: ms[n, past] for n in names}
        print(f"past {past}: " + ", ".join(f"{n} {ms[n, past]:.2f} ms" for n in names), flush=True)
    del steps, caches, runners
    first, last = args.past[0], args.past[-1]
    result["growth"] = {n: result["ms_per_step"][last][n] / result["ms_per_step"][first][n] for n in names}
    base = names[0]
    result["speedup_vs_first"] = {
        past: {n: row[base] / row[n] for n in names} for past, row in result["ms_per_step"].items()
    }
    if not args.no_profile:
        kv = random_cache(dims, first)
        result["profile_at_past"] = first
        result["profile"] = {
            f"{t} {v}": profiled(args.bundle, tier, v, args.threads, kv, args.budget)
            for t, tier in tiers.items()
            for v in args.variants
        }
    for t in bound if bound else ():
        if t in tiers:
            bound[t]["x_bound"] = {
                n: result["ms_per_step"][first][n] / bound[t]["bound_ms"]
                for n in names
                if n.startswith(f"{t} ")
            }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.threads} threads, {result['machine']['cpu']}; speed-up against {base}")
    for n in names:
        line = f"  {n:18s} " + " ".join(f"{result['ms_per_step'][p][n]:8.2f} ms @{p}" for p in args.past)
        line += f"  x{result['speedup_vs_first'][first][n]:.2f}  {last}/{first} {result['growth'][n]:.3f}x"
        if "profile" in result:
            prof = result["profile"][n]
            line += f"  {prof['kernels']} kernels, {prof['between_kernels_ms']:.2f} ms between them"
        print(line)
    for t, b in bound.items():
        if isinstance(b, dict):
            print(
                f"  {t}: reads {b['read_bytes'] / 1e9:.2f} GB a step, bound {b['bound_ms']:.1f} ms: "
                + ", ".join(f"{n} {x:.2f}x" for n, x in b["x_bound"].items())
            )


if __name__ == "__main__":
    main()
