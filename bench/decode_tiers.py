"""Benchmark: decode speed of each quantised tier against FP32, interleaved in one process, and whether
its greedy transcript is unchanged.

``bench/scale.py`` times each tier in a process of its own, one after another; on a small model, where a
decode step takes a few milliseconds, the machine's drift between those processes is as large as the
difference being measured. Here every tier's decode_step session is open at once and the steps
alternate (FP32, int8, int8s, ..., FP32, ...), each on the same token and the same FP32 cache of the
clip's prompt, so drift hits all of them alike; the figure is the median over ``--steps`` rounds. Each
tier's transcript comes from its own full pipeline (its encoder, prompt_encode and decode_step).

    python bench/decode_tiers.py --bundle out/trained --clip synthetic/heldout/heldout-000.flac
    python bench/decode_tiers.py --bundle /tmp/granite-full/bundle --past 330   # full size, decode only

``--past N`` opens only the decode_step sessions and times them on a seeded random cache of N positions
(full size: FP32, int8 and int8w decode_step fit in 24 GiB together, their whole pipelines do not); a
random-weight model has no transcript worth comparing, so none is made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_cache import SETTLE_S  # noqa: E402
from quantise_full import machine_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--clip", type=Path, help="The clip whose prompt fills the cache (not with --past).")
    parser.add_argument("--past", type=int, help="Decode only, on a random cache of this many positions.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="Timed rounds (each times every tier once).")
    parser.add_argument("--tokens", type=int, default=64, help="Greedy budget for the transcripts.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from granite_onnx.runtime.audio import load_audio
    from granite_onnx.runtime.bundle import available_tiers
    from granite_onnx.runtime.features import audio_token_count, log_mel
    from granite_onnx.runtime.pipeline import SpeechPipeline

    if (args.clip is None) == (args.past is None):
        parser.error("give either --clip or --past")
    graphs = ("decode_step",) if args.past else None
    tiers = available_tiers(args.bundle)  # None is FP32, first
    # The files' own decode_step (concatenating cache, dynamic batch): the steps are fed its inputs.
    pipes = {
        t or "fp32": SpeechPipeline(
            args.bundle, t, threads=args.threads, graphs=graphs, kv_cache="concat", decode_batch=None
        )
        for t in tiers
    }
    fp32 = pipes["fp32"]
    tokens: dict[str, list[int] | None] = dict.fromkeys(pipes)
    if args.past:
        dims = fp32.bundle.dims
        rng = np.random.default_rng(0)
        kv = [
            rng.standard_normal((1, dims.kv_heads, args.past, dims.head_dim), np.float32)
            for _ in range(2 * dims.num_layers)
        ]
        token = np.array([[1]], np.int64)
    else:
        audio = load_audio(args.clip, fp32.bundle.features.sampling_rate)
        features = log_mel(audio, fp32.bundle.features)[None]
        ids = fp32.prompt_ids(audio_token_count(len(audio), fp32.bundle.features))
        for name, pipe in pipes.items():
            tokens[name] = list(pipe.generate(ids, pipe.audio_embeds(features), args.tokens).token_ids)
        logits, kv = fp32.prompt(ids, fp32.audio_embeds(features))
        token = np.array([[int(np.argmax(logits[0]))]], np.int64)
    feeds = fp32.step_feeds(token, kv)
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(args.steps + 5):
        for name, pipe in pipes.items():
            time.sleep(SETTLE_S)  # the other sessions' threads stop spinning first (see decode_cache.py)
            start = time.perf_counter()
            pipe.sessions["decode_step"].run(None, feeds)
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t[5:]) * 1e3 for name, t in times.items()}
    result = {
        "machine": machine_facts(args.threads),
        "bundle": str(args.bundle),
        "clip": args.clip.name if args.clip else None,
        "past": int(kv[0].shape[2]),
        "steps": args.steps,
        "tiers": {
            name: {
                "decode_ms_median": round(ms[name], 4),
                "decode_ms_p10_p90": [
                    round(float(np.percentile(times[name][5:], q)) * 1e3, 4) for q in (10, 90)
                ],
                "fp32_over_tier": round(ms["fp32"] / ms[name], 3),
                "tokens_equal_fp32": None if tokens[name] is None else tokens[name] == tokens["fp32"],
            }
            for name in pipes
        },
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.bundle} on {args.clip.name if args.clip else 'a random cache'}, {args.threads} threads,"
        f" past {result['past']}, {args.steps} rounds"
    )
    for name, r in result["tiers"].items():
        p10, p90 = r["decode_ms_p10_p90"]
        print(
            f"  {name:6s} {r['decode_ms_median']:8.3f} ms/step (p10 {p10:.3f}, p90 {p90:.3f})"
            f"  FP32/tier {r['fp32_over_tier']:5.2f}x  transcript unchanged: {r['tokens_equal_fp32']}"
        )


if __name__ == "__main__":
    main()
