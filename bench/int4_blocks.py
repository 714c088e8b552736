"""4-bit recipes side by side on the trained fixture: method x block size x grid, judged by held-out WER.

Each candidate is written as a tier ``int4w-<method>-b<block>-<grid>`` of a scratch copy of the FP32 bundle
(the LLM graphs at 4 bits, the encoder int8w, as the int4w tier does), audited like any tier, and measured by
one parity run against transformers' PyTorch model (one reference for all of them): corpus WER vs PyTorch on
the held-out set, the margins where each left PyTorch, and each candidate's most sensitive layers. With
``--full BUNDLE`` (a full-size FP32 bundle, e.g. /tmp/granite-full/bundle) it also times each block size's
RTN decode_step against FP32, interleaved in one process, and sizes the graphs. Results go to ``--json``.

    python bench/int4_blocks.py --bundle out/trained --calibration synthetic/calibration \\
        --heldout synthetic/heldout --json bench/results/int4_blocks_trained.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from granite_onnx.checkpoint import CheckpointSource  # noqa: E402
from granite_onnx.parity.harness import ParityOptions, run_parity  # noqa: E402
from granite_onnx.quantise import int4  # noqa: E402
from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle  # noqa: E402
from granite_onnx.quantise.tiers import TIERS  # noqa: E402
from granite_onnx.runtime.cpu import current_cpu  # noqa: E402
from granite_onnx.specs import BUNDLE_GRAPHS  # noqa: E402
from granite_onnx.toolchain import versions  # noqa: E402


def candidate_name(method: str, block: int, symmetric: bool) -> str:
    return f"int4w-{method}-b{block}-{'sym' if symmetric else 'asym'}"


def scratch_bundle(bundle: Path, work: Path) -> Path:
    """The FP32 graphs and the checkpoint files of ``bundle`` (no tiers, no reports) in ``work``."""
    out = work / "bundle"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in bundle.iterdir():
        fp32_graph = path.suffix in (".onnx", ".onnx_data") and path.name.split(".")[0] in BUNDLE_GRAPHS
        config = path.suffix in (".json", ".jinja") and not path.name.startswith(("quantise_", "parity_"))
        if path.is_file() and (fp32_graph or config) and path.name != "granite_export_metadata.json":
            shutil.copy2(path, out / path.name)
    return out


def quality(args) -> dict:
    bundle = scratch_bundle(Path(args.bundle), Path(args.work))
    base = TIERS["int4w"]
    results, tiers = {}, []
    variants = [((), "int8w")]
    if args.eight_bit:
        variants.append((tuple(args.eight_bit), "int8w"))
    if args.fp32_encoder:
        variants += [(v, "fp32") for v, _ in list(variants)]
    for method in args.methods:
        for block in args.blocks:
            for symmetric in args.grids:
                for (eight_bit, encoder), table_bits, encoder_bits in itertools.product(
                    variants, args.table_bits, args.encoder_bits
                ):
                    name = candidate_name(method, block, symmetric)
                    name += "-8bit" if eight_bit else ""
                    name += "-fp32enc" if encoder == "fp32" else ""
                    name += f"-rows{table_bits}" if len(args.table_bits) > 1 else ""
                    name += f"-enc{encoder_bits}" if len(args.encoder_bits) > 1 else ""
                    graphs = base.graphs if encoder == "int8w" else ("prompt_encode", "decode_step")
                    tier = replace(
                        base,
                        name=name,
                        graphs=graphs,
                        needs_clips=method == "gptq",
                        write_graph=int4.writer(
                            method, block, symmetric, eight_bit, table_bits, encoder_bits
                        ),
                    )
                    start = time.perf_counter()
                    report = quantise_bundle(bundle, tier, QuantiseOptions(clips=Path(args.calibration)))
                    sensitive = {g.graph: g.details.get("sensitive_layers") for g in report.graphs}
                    results[name] = {
                        "method": method,
                        "block": block,
                        "grid": "symmetric" if symmetric else "asymmetric",
                        "eight_bit": list(eight_bit),
                        "encoder": encoder,
                        "table_bits": table_bits,
                        "encoder_bits": encoder_bits,
                        "seconds_to_write": round(time.perf_counter() - start, 1),
                        "llm_bytes": sum(g.bytes_after for g in report.graphs if g.graph != "encoder"),
                        "sensitive_layers": sensitive,
                    }
                    tiers.append(name)
                    print(f"wrote {name} in {results[name]['seconds_to_write']} s", flush=True)
    options = ParityOptions(tiers=("fp32", *tiers), gate_set="heldout", wer_limit=0.01, max_new_tokens=200)
    parity = run_parity(
        bundle,
        CheckpointSource(Path(args.checkpoint), model_id="trained", is_fixture=True),
        [Path(args.heldout)],
        options,
    )
    summary = parity.sets[Path(args.heldout).name]["tiers"]
    for name in tiers:
        results[name]["heldout_wer_vs_pytorch"] = summary[name]["wer_vs_pytorch"]
        results[name]["divergent_clips"] = summary[name]["divergent_clips"]
        results[name]["margins_at_divergence"] = summary[name]["margins_at_divergence"]
        print(f"{name:26s} held-out WER vs PyTorch {summary[name]['wer_vs_pytorch']:.2%}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default="out/trained")
    parser.add_argument("--checkpoint", default=str(REPO / "src/granite_onnx/assets/trained"))
    parser.add_argument("--calibration", default="synthetic/calibration")
    parser.add_argument("--heldout", default="synthetic/heldout")
    parser.add_argument("--work", default="/tmp/granite-int4-blocks")
    parser.add_argument("--methods", nargs="+", default=["rtn", "gptq"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32, 64, 128])
    parser.add_argument("--grids", nargs="+", default=["sym", "asym"])
    parser.add_argument(
        "--eight-bit", nargs="*", default=[], help="variants with these MatMul node patterns at 8 bits"
    )
    parser.add_argument("--fp32-encoder", action="store_true", help="variants with the encoder left FP32")
    parser.add_argument(
        "--table-bits", nargs="+", type=int, default=[8], help="embedding rows at these widths (8, 4)"
    )
    parser.add_argument(
        "--encoder-bits", nargs="+", type=int, default=[8], help="the encoder at int8w (8) or int4 RTN (4)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.grids = [g == "sym" for g in args.grids]
    doc = {
        "what": "4-bit candidates on the trained fixture: held-out WER vs PyTorch by method, block, grid",
        "cpu": current_cpu().to_json(),
        "toolchain": versions(),
        "date": time.strftime("%Y-%m-%d"),
        "candidates": quality(args),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
