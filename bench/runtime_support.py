"""The per-tier onnxruntime support table the metadata and the card quote, from bench/runtime_versions.py.

Three figures per tier, each the oldest release measured (over every bundle measured), with the newer
releases where it did not hold listed beside it:

- **loads**: every graph of the tier loads (its ops and types are implemented);
- **correct**: every graph also computes what the pinned onnxruntime computes with it (within 1e-3 of
  its largest output), either fused as at load (what a consumer of the pinned release gets) or as the graph
  literally says (the pinned release unoptimised: releases before 1.25 do not fuse int8w's DequantizeLinear ->
  MatMul and compute it exactly, which is not an error). This is where this bundle's parity figures hold; a
  release that loads a tier but computes it otherwise was not measured for parity;
- **fast**: correct, and its weight-only or integer MatMuls fused (bench/runtime_versions.py's op count).

    python bench/runtime_support.py  # results/runtime_versions.json -> quantise/runtime_support.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "runtime_versions.json"
TABLE = REPO / "src" / "granite_onnx" / "quantise" / "runtime_support.json"


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def loads(run: dict) -> bool:
    graphs = run.get("graphs") or {}
    return bool(graphs) and all(g.get("loaded") for g in graphs.values())


def correct(run: dict) -> bool:
    graphs = run.get("graphs") or {}
    return bool(graphs) and all(
        g.get("loaded") and (g.get("correct") or g.get("matches_unoptimised")) for g in graphs.values()
    )


def _oldest(versions: dict[str, bool]) -> tuple[str | None, list[str]]:
    """The oldest release where it holds, and the newer ones where it does not."""
    good = sorted((v for v, ok in versions.items() if ok), key=_key)
    if not good:
        return None, []
    oldest = good[0]
    return oldest, sorted((v for v, ok in versions.items() if not ok and _key(v) > _key(oldest)), key=_key)


def summarise(results: dict) -> dict:
    """Tier name -> its support figures over every measured bundle (each bundle's own runs)."""
    per_tier: dict[str, dict[str, dict[str, list[bool]]]] = {}
    for bundle, measured in results["bundles"].items():
        for tier, record in measured["tiers"].items():
            slot = per_tier.setdefault(tier, {"loads": {}, "correct": {}, "fast": {}, "bundles": []})
            slot["bundles"].append(bundle)
            for version, run in record["versions"].items():
                slot["loads"].setdefault(version, []).append(loads(run))
                slot["correct"].setdefault(version, []).append(correct(run))
                slot["fast"].setdefault(version, []).append(bool(run.get("fused")) and correct(run))
    table = {}
    for tier, slot in sorted(per_tier.items()):
        oldest_load, not_loading = _oldest({v: all(ok) for v, ok in slot["loads"].items()})
        oldest_correct, failing = _oldest({v: all(ok) for v, ok in slot["correct"].items()})
        oldest_fast, slow = _oldest({v: all(ok) for v, ok in slot["fast"].items()})
        table[tier] = {
            "oldest_loading": oldest_load,
            "not_loading_on_newer": not_loading,
            "oldest_correct": oldest_correct,
            "not_correct_on_newer": failing,
            "oldest_fast": oldest_fast,
            "not_fast_on_newer": slow,
            "bundles": slot["bundles"],
        }
    return {
        "about": "oldest onnxruntime release that runs each tier correctly and fast (fused), from "
        "bench/runtime_versions.py (bench/runtime_support.py wrote this)",
        "machine": results["machine"],
        "date": results["date"],
        "versions_tried": results["versions_tried"],
        "pinned_onnxruntime": results["pinned_onnxruntime"],
        "tiers": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args()
    table = summarise(json.loads(args.results.read_text()))
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    for tier, row in table["tiers"].items():
        print(
            f"{tier:12s} loads from {row['oldest_loading']}, correct from {row['oldest_correct']} (not on "
            f"{row['not_correct_on_newer'] or 'none'}), fast from {row['oldest_fast']}"
        )


if __name__ == "__main__":
    main()
