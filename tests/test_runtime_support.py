"""The per-tier onnxruntime table the metadata and the card quote is what the committed measurement says.

`make bench-runtime-versions` (bench/runtime_versions.py) runs every tier of the tiny and trained bundles on
one wheel per onnxruntime minor release from PyPI and commits bench/results/runtime_versions.json;
bench/runtime_support.py turns it into src/granite_onnx/quantise/runtime_support.json. Installing fifteen
wheels does not fit the CI budget, so the test here is that the shipped table is the committed measurement's
summary, and that the rule it applies is the documented one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _support_module():
    spec = importlib.util.spec_from_file_location("runtime_support", REPO / "bench" / "runtime_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_table_is_the_committed_measurement():
    support = _support_module()
    results = json.loads((REPO / "bench" / "results" / "runtime_versions.json").read_text())
    shipped = json.loads((REPO / "src" / "granite_onnx" / "quantise" / "runtime_support.json").read_text())
    assert support.summarise(results) == shipped
    assert {"fp32", "int8", "int8w", "int8s", "fp16", "int4w"} <= set(shipped["tiers"])
    assert shipped["tiers"]["fp32"]["oldest_loading"] == "1.18.1"  # 1.17 has no IR version 10


def test_a_release_counts_as_correct_fused_or_literal_and_fast_only_when_correct():
    support = _support_module()
    run = lambda **g: {"graphs": {"encoder": {"loaded": True, **g}}, "fused": True}  # noqa: E731
    assert support.correct(run(correct=True)) and support.correct(
        run(correct=False, matches_unoptimised=True)
    )
    assert not support.correct(run(correct=False, matches_unoptimised=False))
    results = {
        "machine": {},
        "date": "d",
        "versions_tried": ["1.0.0", "1.1.0", "1.2.0"],
        "pinned_onnxruntime": "1.2.0",
        "bundles": {
            "b": {
                "tiers": {
                    "t": {
                        "versions": {
                            "1.0.0": {"graphs": {"g": {"loaded": False}}},
                            "1.1.0": {**run(correct=True), "fused": False},
                            "1.2.0": run(correct=True),
                        }
                    }
                }
            }
        },
    }
    row = support.summarise(results)["tiers"]["t"]
    assert (row["oldest_loading"], row["oldest_correct"], row["oldest_fast"]) == ("1.1.0", "1.1.0", "1.2.0")


def test_the_metadata_carries_the_table_for_the_bundle_tiers(measured_bundle):
    from granite_onnx.metadata.collect import collect_metadata

    meta = collect_metadata(measured_bundle)
    support = meta["runtime_support"]
    assert set(support["tiers"]) == {"fp32", *meta["quantisation"]}
    assert support["tiers"]["fp32"]["oldest_loading"] and support["pinned_onnxruntime"] == "1.31.1"
    for tier in meta["quantisation"]:  # a recipe the table has, or one said plainly not to be measured
        assert support["tiers"][tier].get("oldest_loading") or support["tiers"][tier] == {"measured": False}
