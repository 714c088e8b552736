"""The int4w tier's held-out WER vs PyTorch on this CPU and on an emulated AVX2-only one (qemu -cpu Haswell).

onnxruntime fuses int4w into MatMulNBits, whose int8-activation kernels differ between AVX-512 VNNI and AVX2:
the tier must hold its 1 % gate on both. Torch-free under the emulator (runtime.crosscheck): greedy tokens
of FP32 and int4w on every held-out clip there and here, scored against PyTorch's transcripts from the
bundle's parity report (FP32 is byte-exact with PyTorch). Needs `make all MODEL=trained` and qemu-user.

    python bench/int4_emulated.py --bundle out/trained --json bench/results/int4w_emulated_avx2_trained.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jiwer

from granite_onnx.parity.metrics import normalise
from granite_onnx.runtime import crosscheck
from granite_onnx.runtime.prompt import PromptBuilder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("out/trained"))
    parser.add_argument("--clips", type=Path, default=Path("synthetic/heldout"))
    parser.add_argument("--tier", default="int4w")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    clips = sorted(args.clips.glob("*.flac"))
    start = time.time()
    runs = {
        "emulated": crosscheck.measure_emulated(
            args.bundle, [args.tier], clips, args.max_new_tokens, timeout=5400
        ),
        "native": crosscheck.measure(args.bundle, [args.tier], clips, args.max_new_tokens),
    }
    decode = PromptBuilder(args.bundle).decode
    report = json.loads((args.bundle / "parity_report.json").read_text())
    pytorch = {c["clip"]: c["pytorch_text"] for c in report["multi_clip_parity"]}
    refs = [normalise(pytorch[c.name]) for c in clips]
    result = {"emulator": runs["emulated"].get("emulator"), "clips": len(clips), "tier": args.tier}
    for where, run in runs.items():
        result[f"{where}_cpu"] = run["cpu"]
        for tier in ("fp32", args.tier):
            hyps = [normalise(decode(list(ids))) for ids in run["tiers"][tier]["token_ids"]]
            result[f"{where}_{tier}_wer_vs_pytorch"] = round(jiwer.wer(refs, hyps), 4)
    same = (
        runs["emulated"]["tiers"][args.tier]["token_ids"] == runs["native"]["tiers"][args.tier]["token_ids"]
    )
    result["tokens_same_emulated_and_native"] = same
    result["token_ids"] = {
        where: {tier: [list(ids) for ids in run["tiers"][tier]["token_ids"]] for tier in ("fp32", args.tier)}
        for where, run in runs.items()
    }
    result["clip_names"] = [c.name for c in clips]
    result["seconds"] = round(time.time() - start)
    print(json.dumps({k: v for k, v in result.items() if k != "token_ids"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
