"""Benchmark: where one graph's time goes, per operator, at several thread counts, beside PyTorch's encoder.

``bench/scale.py`` says how the ONNX pipeline compares with PyTorch end to end; this says why. For one
graph of a bundle it runs onnxruntime's profiler on one warm run per thread count and sums kernel time
by operator type and by node (layer indices folded, so the 16 conformer layers' ``up_conv`` are one
row). Comparing thread counts shows which operators do not scale. With ``--checkpoint`` the encoder is
also profiled in PyTorch (``torch.profiler``, by aten operator) on the same features and threads.

    python bench/profile_ops.py --bundle /tmp/granite-full/bundle --graph encoder --threads 2 16 \\
        --checkpoint /tmp/granite-full/checkpoint --json /tmp/encoder_ops.json
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantise_full import ENCODER_CLIP, REPO, machine_facts  # noqa: E402
from scale import clip_features  # noqa: E402


def graph_feeds(bundle, graph: str, seconds: float, past: int) -> dict[str, np.ndarray]:
    """Feeds for ``graph``: the clip's features for the encoder; zeros of the right shapes for the LLM
    graphs (their kernel times depend on shapes, not values)."""
    from granite_onnx.runtime.pipeline import SpeechPipeline, step_feeds
    from granite_onnx.runtime.prompt import PromptBuilder

    features = clip_features(REPO / "clips" / ENCODER_CLIP, seconds, bundle.features).astype(np.float32)
    if graph == "encoder":
        return {"input_features": features}
    dims = bundle.dims
    if graph == "decode_step":
        kv = [np.zeros((1, dims.kv_heads, past, dims.head_dim), np.float32)] * (2 * dims.num_layers)
        return step_feeds(dims.num_layers, np.array([[1]], np.int64), kv)
    from granite_onnx.runtime.features import audio_token_count

    tokens = audio_token_count(int(seconds * bundle.features.sampling_rate), bundle.features)
    ids = np.array([PromptBuilder(bundle.folder).input_ids(tokens)], np.int64)
    return SpeechPipeline.prompt_feeds(ids, np.zeros((1, tokens, dims.hidden), np.float32))


def fold(name: str) -> str:
    """A node or module name with its layer index replaced, so repeated layers sum into one row."""
    return re.sub(r"(layers?)\.\d+", r"\1.N", name)


def onnx_profile(bundle, graph: str, feeds: dict, threads: int, prefix: Path) -> dict:
    import onnxruntime as ort

    from granite_onnx.runtime.sessions import session_options

    options = session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(bundle.path(graph)), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up
    start = time.perf_counter()
    session.run(None, feeds)
    wall = time.perf_counter() - start
    events = json.loads(Path(session.end_profiling()).read_text())
    last = max(e["ts"] for e in events if e.get("name") == "model_run")
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last:
            op = e["args"].get("op_name", "?")
            by_op[op] += e["dur"] / 1e6
            by_node[f"{op} {fold(e['name'].removesuffix('_kernel_time'))}"] += e["dur"] / 1e6
    return {"wall_s": wall, "kernel_s": sum(by_op.values()), "by_op": dict(by_op), "by_node": dict(by_node)}


def torch_encoder_profile(checkpoint: Path, features: np.ndarray, threads: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import GraniteSpeechForConditionalGeneration

    torch.set_num_threads(threads)
    model = GraniteSpeechForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    x = torch.from_numpy(features)
    with torch.no_grad():
        model.get_audio_features(x, return_dict=True)  # warm-up
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.get_audio_features(x, return_dict=True)
        wall = time.perf_counter() - start
    by_op = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    return {"wall_s": wall, "torch": torch.__version__, "by_op": by_op}


def top(table: dict, n: int) -> list[tuple[str, float]]:
    return sorted(table.items(), key=lambda kv: -kv[1])[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--tier", help="Profile this quantised tier's graph (default FP32).")
    parser.add_argument("--graph", choices=("encoder", "prompt_encode", "decode_step"), default="encoder")
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--past", type=int, default=330, help="decode_step's cache length")
    parser.add_argument(
        "--checkpoint", type=Path, help="Also profile PyTorch's encoder (encoder graph only)."
    )
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from granite_onnx.runtime.bundle import Bundle

    bundle = Bundle.open(args.bundle, args.tier)
    feeds = graph_feeds(bundle, args.graph, args.seconds, args.past)
    prefix = (args.json.parent if args.json else Path("/tmp")) / f"profile_{args.graph}"
    result = {"machine": machine_facts(max(args.threads)), "graph": args.graph, "tier": args.tier}
    result["seconds"] = args.seconds
    result["onnx"] = {t: onnx_profile(bundle, args.graph, feeds, t, prefix) for t in args.threads}
    if args.checkpoint and args.graph == "encoder":
        result["pytorch"] = {
            t: torch_encoder_profile(args.checkpoint, feeds["input_features"], t) for t in args.threads
        }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    for threads, run in result["onnx"].items():
        print(
            f"\nonnxruntime, {threads} threads: {run['wall_s']:.3f} s wall,"
            f" {run['kernel_s']:.3f} s in kernels"
        )
        for name, secs in top(run["by_op"], args.top):
            print(f"  {name:40s} {secs:8.3f} s")
        for name, secs in top(run["by_node"], args.top):
            print(f"  {name[:72]:72s} {secs:8.3f} s")
    for threads, run in result.get("pytorch", {}).items():
        print(f"\nPyTorch {run['torch']}, {threads} threads: {run['wall_s']:.3f} s wall")
        for name, secs in top(run["by_op"], args.top):
            print(f"  {name:40s} {secs:8.3f} s")


if __name__ == "__main__":
    main()
