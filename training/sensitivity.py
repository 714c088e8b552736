"""Which layers a quantised tier is sensitive in: quantise one group of layers at a time, the rest FP32.

``python -m training.sensitivity --bundle out/trained --clips synthetic/heldout`` (after ``make all
MODEL=trained``). For each tier and each group (the encoder, the projector, each LLM layer, the embedding,
the LM head) the FP32 bundle is hard-linked into a scratch folder and that tier is written with every
*other* group passed to ``--exclude``. Its greedy transcripts on the clips are then compared with the
FP32 ONNX transcripts, which equal PyTorch's token for token on this model (``make parity``): WER and the
number of clips that differ. A group whose quantisation alone costs WER is what ``--exclude`` should
keep in FP32. The whole tier, and the tier minus each group in turn, are measured as well, so a
default can be checked, not guessed.

Torch-free (onnxruntime and the package's runtime only); about 10 minutes on 2 cores for the trained model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import jiwer

from granite_onnx.parity.clips import load_clips
from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle
from granite_onnx.runtime.audio import load_audio
from granite_onnx.runtime.pipeline import SpeechPipeline

# Node-name patterns of each group, as the TorchScript exporter names them (module paths).
GROUPS = {
    "encoder": "/encoder/*",
    "projector": "/projector/*",
    "embedding": "*/embed_tokens/*",
    **{f"llm.{i}": f"/language_model/layers.{i}/*" for i in range(4)},
    "lm_head": "/lm_head/*",
}
TIERS = ("int8", "int8w", "int8s")


def transcripts(bundle: Path, tier: str | None, clips, threads: int) -> list[str]:
    pipe = SpeechPipeline(bundle, tier, threads=threads)
    return [pipe.transcribe_array(load_audio(c.path, pipe.bundle.features.sampling_rate)).text for c in clips]


def fp32_copy(bundle: Path, dest: Path) -> None:
    """The FP32 graphs and the files beside them (copies: onnx refuses external data with a second hard
    link, and the trained model's are tens of MB)."""
    dest.mkdir(parents=True)
    for path in bundle.iterdir():
        tiered = any(f"_{t}." in path.name for t in (*TIERS, "fp16"))
        if path.is_file() and not path.name.startswith(".") and not tiered:
            shutil.copyfile(path, dest / path.name)


def measure(
    bundle: Path, tier: str, exclude: tuple[str, ...], clips, calibration: Path, reference, threads: int
) -> dict:
    with tempfile.TemporaryDirectory(prefix="granite-sensitivity-") as tmp:
        work = Path(tmp) / "bundle"
        fp32_copy(bundle, work)
        quantise_bundle(work, tier, QuantiseOptions(exclude=exclude, clips=calibration, threads=threads))
        got = transcripts(work, tier, clips, threads)
    return {
        "wer_vs_fp32": jiwer.wer(reference, got),
        "divergent_clips": sum(a != b for a, b in zip(reference, got, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("out/trained"))
    parser.add_argument("--clips", type=Path, default=Path("synthetic/heldout"))
    parser.add_argument("--calibration", type=Path, default=Path("synthetic/calibration"))
    parser.add_argument("--tier", action="append", choices=TIERS)
    parser.add_argument("--group", action="append", choices=list(GROUPS), help="Only these groups.")
    parser.add_argument("--only", action="store_true", help="Skip the whole-tier-minus-one-group runs.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("bench/results/sensitivity_trained.json"))
    args = parser.parse_args()
    clips = load_clips(args.clips)
    reference = transcripts(args.bundle, None, clips, args.threads)
    result: dict = {"bundle": str(args.bundle), "clips": str(args.clips), "groups": GROUPS, "tiers": {}}
    for tier in args.tier or TIERS:
        doc = result["tiers"][tier] = {
            "whole": measure(args.bundle, tier, (), clips, args.calibration, reference, args.threads)
        }
        print(f"{tier} whole tier: {doc['whole']}", flush=True)
        for group, pattern in GROUPS.items():
            if args.group and group not in args.group:
                continue
            others = tuple(p for g, p in GROUPS.items() if g != group)
            only = measure(args.bundle, tier, others, clips, args.calibration, reference, args.threads)
            doc[group] = {"only_this_group": only}
            if not args.only:
                without = measure(
                    args.bundle, tier, (pattern,), clips, args.calibration, reference, args.threads
                )
                doc[group]["all_but_this_group"] = without
            print(f"{tier} {group:10s} {doc[group]}", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
