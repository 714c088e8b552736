"""Benchmark: ONNX runtime vs PyTorch eager on one clip, side by side in one run.

Both sides get identical features and decode the same fixed number of greedy tokens (no early
stop) on the same thread count; the script prints encoder, prompt and per-token decode times, their
ratios, whether the tokens agree, and the process's peak RSS. A benchmark, never a test.

    python bench/runtime.py --bundle out/tiny --model tiny --clip clips/mfa-acoustic-corpus.flac
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from granite_onnx.checkpoint import load_reference_model, resolve_checkpoint
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.features import log_mel
from granite_onnx.runtime.pipeline import SpeechPipeline


def best_of(fn, repeats: int):
    """Minimum wall time of ``repeats`` calls (noise on a shared 2-core machine only adds)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


@torch.no_grad()
def torch_decode(model, ids: np.ndarray, features: np.ndarray, tokens: int) -> tuple[float, float, list[int]]:
    """Prompt time and decode ms/token of a plain cached greedy loop in PyTorch."""
    ids_t = torch.from_numpy(ids)
    start = time.perf_counter()
    out = model(
        input_ids=ids_t,
        input_features=torch.from_numpy(features),
        attention_mask=torch.ones_like(ids_t),
        use_cache=True,
    )
    prompt_s = time.perf_counter() - start
    cache, token, generated, total = out.past_key_values, int(out.logits[0, -1].argmax()), [], ids.shape[1]
    start = time.perf_counter()
    for _ in range(tokens):
        generated.append(token)
        out = model(
            input_ids=torch.tensor([[token]]),
            attention_mask=torch.ones(1, total + 1, dtype=torch.long),
            past_key_values=cache,
            use_cache=True,
        )
        cache, token, total = out.past_key_values, int(out.logits[0, -1].argmax()), total + 1
    return prompt_s, (time.perf_counter() - start) / tokens * 1e3, generated


def onnx_decode(pipe: SpeechPipeline, ids: np.ndarray, embeds: np.ndarray, tokens: int):
    start = time.perf_counter()
    logits, kv = pipe.prompt(ids, embeds)
    prompt_s = time.perf_counter() - start
    generated, token = [], int(logits[0].argmax())
    start = time.perf_counter()
    decoder = pipe.start_decode(kv, ids.shape[1] + tokens)
    for _ in range(tokens):
        generated.append(token)
        logits = decoder.step(np.array([[token]], np.int64))
        token = int(logits[0].argmax())
    return prompt_s, (time.perf_counter() - start) / tokens * 1e3, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--clip", type=Path, default=Path("clips/mfa-acoustic-corpus.flac"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    source = resolve_checkpoint(args.model_dir, None if args.model_dir else args.model)
    model = load_reference_model(source.path)
    pipe = SpeechPipeline(args.bundle, threads=args.threads)
    audio = load_audio(args.clip, pipe.bundle.features.sampling_rate)
    features_s, features = best_of(lambda: log_mel(audio, pipe.bundle.features)[None], args.repeats)

    with torch.no_grad():
        torch_enc_s, embeds_t = best_of(
            lambda: model.get_audio_features(torch.from_numpy(features), return_dict=True).pooler_output,
            args.repeats,
        )
    onnx_enc_s, embeds = best_of(lambda: pipe.audio_embeds(features), args.repeats)
    ids = pipe.prompt_ids(embeds.shape[1])
    t_prompt, t_ms, t_tokens = min(
        (torch_decode(model, ids, features, args.tokens) for _ in range(args.repeats)), key=lambda r: r[1]
    )
    o_prompt, o_ms, o_tokens = min(
        (onnx_decode(pipe, ids, embeds, args.tokens) for _ in range(args.repeats)), key=lambda r: r[1]
    )
    result = {
        "clip": args.clip.name,
        "audio_s": round(len(audio) / pipe.bundle.features.sampling_rate, 2),
        "features_s_numpy": features_s,
        "prompt_tokens": int(ids.shape[1]),
        "decoded_tokens": args.tokens,
        "threads": args.threads,
        "encoder_s": {
            "pytorch": torch_enc_s,
            "onnx": onnx_enc_s,
            "onnx_over_pytorch": onnx_enc_s / torch_enc_s,
        },
        "prompt_s": {"pytorch": t_prompt, "onnx": o_prompt, "onnx_over_pytorch": o_prompt / t_prompt},
        "decode_ms_per_token": {"pytorch": t_ms, "onnx": o_ms, "onnx_over_pytorch": o_ms / t_ms},
        "tokens_equal": t_tokens == o_tokens,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "embeds_max_abs_error": float(np.abs(embeds - embeds_t.numpy()).max()),
    }
    print(
        f"{args.clip.name}: {result['audio_s']} s audio, prompt {result['prompt_tokens']} tokens, "
        f"{args.tokens} decoded tokens, {args.threads} threads"
    )
    print(f"{'stage':22s} {'PyTorch':>10s} {'ONNX':>10s} {'ONNX/PyTorch':>13s}")
    for key, unit, scale in (
        ("encoder_s", "ms", 1e3),
        ("prompt_s", "ms", 1e3),
        ("decode_ms_per_token", "ms/tok", 1),
    ):
        r = result[key]
        print(
            f"{key + ' (' + unit + ')':22s} {r['pytorch'] * scale:10.2f} {r['onnx'] * scale:10.2f} "
            f"{r['onnx_over_pytorch']:13.2f}"
        )
    print(f"numpy log-mel front-end: {features_s * 1e3:.1f} ms (shared by both sides)")
    print(f"tokens equal: {result['tokens_equal']}; peak RSS {result['peak_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
