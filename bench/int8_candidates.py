"""Benchmark: INT8 recipes measured side by side, on this CPU and on an emulated AVX2-only one.

Each candidate recipe is written as a tier of a copy of the bundle (its FP32 files copied), then:
- the saturation proof of its stored weights (:mod:`granite_onnx.runtime.saturation`);
- encoder and first-logit error against FP32, natively and under ``qemu-x86_64 -cpu Haswell``, where
  onnxruntime runs the AVX2 kernels (:mod:`granite_onnx.runtime.crosscheck`);
- with ``--wer-clips``, the corpus WER of its greedy transcripts against FP32's (parity holds FP32
  byte-exact with PyTorch, so this is WER against PyTorch), natively and emulated;
- one full-size-shaped decode MatMul (1 x K by K x N, 2 threads) per kernel, interleaved with FP32.

    python bench/int8_candidates.py --bundle out/tiny --clips clips
    python bench/int8_candidates.py --bundle out/trained --clips synthetic/calibration \\
        --wer-clips synthetic/heldout --json bench/results/int8_candidates_trained.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from quantise_full import machine_facts  # noqa: E402

from granite_onnx.quantise import dynamic, static  # noqa: E402
from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle  # noqa: E402
from granite_onnx.quantise.tiers import Tier  # noqa: E402
from granite_onnx.runtime import crosscheck  # noqa: E402
from granite_onnx.runtime.bundle import graph_file  # noqa: E402
from granite_onnx.runtime.pipeline import SpeechPipeline  # noqa: E402
from granite_onnx.runtime.saturation import prove  # noqa: E402
from granite_onnx.specs import GRAPH_NAMES  # noqa: E402

CANDIDATES = {
    # name: (tier writer, needs calibration clips, what it is)
    "dyn-full": (
        dynamic.writer(dynamic.PUBLISHED),
        False,
        "dynamic, full-range s8 weights (published 4.1-2b)",
    ),
    "dyn-s7": (dynamic.writer(dynamic.SEVEN_BIT), False, "dynamic, 7-bit s8 weights (reduce_range)"),
    "dyn-u8u8": (dynamic.writer(dynamic.U8U8), False, "dynamic, u8 weights (U8U8 kernels)"),
    "qdq-full": (static.writer(static.FULL_RANGE), True, "static QDQ, full-range s8 weights"),
    "qdq-s7": (static.writer(static.SEVEN_BIT), True, "static QDQ, 7-bit s8 weights, rounded ranges"),
    "qdq-u8u8": (static.writer(static.U8U8), True, "static QDQ, u8 weights, rounded ranges"),
    "qdq-s8s8": (static.writer(static.S8S8), True, "static QDQ, s8 weights, symmetric s8 activations"),
}


def candidate_bundle(src: Path, work: Path) -> Path:
    """A bundle folder holding a copy of ``src``'s FP32 files (onnx refuses hard-linked sidecars), no tier."""
    dst = work / "bundle"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and not any(path.name.startswith(f"{g}_") for g in GRAPH_NAMES):
            if path.name.startswith("quantise_") or path.name in ("parity_report.json", "README.md"):
                continue
            shutil.copy2(path, dst / path.name)
    return dst


def corpus_wer(reference: list[str], hypothesis: list[str]) -> float:
    pairs = [(r, h) for r, h in zip(reference, hypothesis, strict=True) if r.strip()]
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])) if pairs else 0.0


def texts(bundle: Path, record: dict) -> dict[str, list[str]]:
    prompts = SpeechPipeline(bundle, None, 1, graphs=()).prompts
    return {t: [prompts.decode(list(ids)) for ids in v["token_ids"]] for t, v in record["tiers"].items()}


def matmul_speeds(k: int, n: int, rounds: int, threads: int) -> dict[str, float]:
    """ms per 1 x K by K x N product: FP32 MatMul and each integer kernel (MatMulInteger after a
    DynamicQuantizeLinear, as the dynamic tiers run it; for s8s8 after a fixed-scale int8 QuantizeLinear),
    interleaved round by round."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)

    def session(kind: str):
        nodes, inits = [], []
        if kind == "fp32":
            inits.append(numpy_helper.from_array(w, "W"))
            nodes.append(helper.make_node("MatMul", ["x", "W"], ["y"]))
        else:
            dtype = np.uint8 if kind == "u8u8" else np.int8  # the weight's type
            q = rng.integers(0 if dtype == np.uint8 else -64, 128 if dtype == np.uint8 else 65, (k, n))
            inits += [numpy_helper.from_array(q.astype(dtype), "Wq")]
            inits += [numpy_helper.from_array(np.array(128 if dtype == np.uint8 else 0, dtype), "Wz")]
            if kind == "s8s8":  # int8 activations: a fixed symmetric scale, as a static QDQ tier has
                inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs")]
                inits += [numpy_helper.from_array(np.array(0, np.int8), "xz")]
                nodes.append(helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]))
            else:
                nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]))
            nodes += [
                helper.make_node("MatMulInteger", ["xq", "Wq", "xz", "Wz"], ["acc"]),
                helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["accf", "xs"], ["y"]),
            ]
        graph = helper.make_graph(
            nodes,
            kind,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    sessions = {kind: session(kind) for kind in ("fp32", "u8s8", "u8u8", "s8s8")}
    x = {"x": rng.standard_normal((1, k)).astype(np.float32)}
    times: dict[str, list[float]] = {kind: [] for kind in sessions}
    for _ in range(rounds):
        for kind, s in sessions.items():
            time.sleep(0.01)  # let the previous session's spinning workers go idle (FACTS: interleaving)
            t0 = time.perf_counter()
            s.run(None, x)
            times[kind].append((time.perf_counter() - t0) * 1e3)
    return {kind: round(statistics.median(v), 4) for kind, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="A bundle with its FP32 graphs exported.")
    parser.add_argument("--clips", type=Path, required=True, help="Calibration clips for the static recipes.")
    parser.add_argument("--wer-clips", type=Path, help="Clips whose transcripts give the WER vs FP32.")
    parser.add_argument("--numeric-clip", type=Path, default=REPO / "clips" / "jfk.flac")
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-emulation", action="store_true", help="Native figures only.")
    parser.add_argument("--matmul-rounds", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/granite-int8-candidates"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    bundle = candidate_bundle(args.bundle.resolve(), args.work)
    for name in args.candidates:
        writer, needs_clips, _ = CANDIDATES[name]
        tier = Tier(name, CANDIDATES[name][2], GRAPH_NAMES, needs_clips, writer)
        print(f"quantising {name}", file=sys.stderr)
        quantise_bundle(bundle, tier, QuantiseOptions(clips=args.clips))
    clips = [args.numeric_clip]
    if args.wer_clips:
        clips += sorted(p for p in args.wer_clips.iterdir() if p.suffix in (".flac", ".wav"))
    runs = {"native": crosscheck.measure(bundle, args.candidates, clips, args.max_new_tokens, threads=2)}
    if not args.no_emulation and crosscheck.qemu():
        print(f"the same under qemu -cpu {crosscheck.EMULATED_CPU} (about 17x slower)", file=sys.stderr)
        runs["emulated"] = crosscheck.measure_emulated(bundle, args.candidates, clips, args.max_new_tokens)
    elif not args.no_emulation:
        print(
            "SKIPPED: no qemu-x86_64 here (apt-get install qemu-user): native figures only", file=sys.stderr
        )
    result: dict = {"machine": machine_facts(2), "bundle": str(args.bundle), "candidates": {}}
    for where, record in runs.items():
        result[f"{where}_cpu"] = record["cpu"]
    for name in args.candidates:
        proofs = [prove(bundle / graph_file(g, name)) for g in GRAPH_NAMES]
        row = {
            "recipe": CANDIDATES[name][2],
            "sites_that_can_saturate": sum(len(p.unsafe) for p in proofs),
            "worst_weight_pair": max(p.summary()["worst_weight_pair"] for p in proofs),
        }
        for where, record in runs.items():
            measured = record["tiers"][name]
            row[f"{where}_encoder_max_abs"] = round(measured["encoder_max_abs"], 4)
            row[f"{where}_logits_max_abs"] = round(measured["logits_max_abs"], 4)
            if args.wer_clips:
                said = texts(bundle, record)
                row[f"{where}_wer_vs_fp32"] = round(corpus_wer(said["fp32"][1:], said[name][1:]), 4)
        result["candidates"][name] = row
    result["decode_matmul_ms"] = {
        f"{k}x{n}": matmul_speeds(k, n, args.matmul_rounds, 2) for k, n in ((2048, 8192), (8192, 2048))
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    header = f"{'candidate':10s} {'unsafe':>6s} {'pair':>4s}"
    for where in runs:
        header += f" | {where}: enc max, logit max" + (", WER" if args.wer_clips else "")
    print(header)
    for name, row in result["candidates"].items():
        line = f"{name:10s} {row['sites_that_can_saturate']:6d} {row['worst_weight_pair']:4d}"
        for where in runs:
            line += f" | {row[f'{where}_encoder_max_abs']:.3f} {row[f'{where}_logits_max_abs']:.3f}"
            if args.wer_clips:
                line += f" {row[f'{where}_wer_vs_fp32']:.2%}"
        print(line)
    for shape, ms in result["decode_matmul_ms"].items():
        print(f"decode MatMul {shape}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))


if __name__ == "__main__":
    main()
