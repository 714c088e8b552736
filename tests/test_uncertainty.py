"""WER with its uncertainty (parity/uncertainty.py): the paired bootstrap of a tier's WER minus PyTorch's."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from granite_onnx.parity.metrics import normalise
from granite_onnx.parity.uncertainty import bootstrap_difference, utterance_errors

REFS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine",
    "speech recognition on a cpu",
    "granite speech exports to onnx",
    "every tier is measured against pytorch",
    "the bundle loads in any runtime",
]
TORCH = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves mine",
    "speech recognition on a cpu",
    "granite speech exports to onyx",
    "every tier is measured against pytorch",
    "the bundle loads in any run time",
]


def test_per_utterance_errors_sum_to_jiwers_corpus_wer():
    errors, words = utterance_errors(REFS, TORCH)
    corpus = jiwer.wer([normalise(r) for r in REFS], [normalise(h) for h in TORCH])
    assert errors.sum() / words.sum() == pytest.approx(corpus, abs=1e-12)
    assert list(errors) == [0, 1, 0, 1, 0, 2] and words.sum() == sum(len(r.split()) for r in REFS)


def test_the_difference_is_the_two_corpus_wers_apart_and_its_interval_holds_it():
    tier = list(TORCH)
    tier[0] = "the quick brown fox jumps over a lazy dog"  # one more error
    tier[3] = "granite speech exports to onnx"  # one fewer
    tier[4] = "every tier is measured against pie torch"  # two more (a substitution and an insertion)
    got = bootstrap_difference(REFS, tier, TORCH)
    wer = lambda hyps: jiwer.wer([normalise(r) for r in REFS], [normalise(h) for h in hyps])  # noqa: E731
    assert got.value == pytest.approx(wer(tier) - wer(TORCH), abs=1e-12)
    assert got.low <= got.value <= got.high and got.low < 0 < got.high
    assert (got.utterances, got.words, got.level) == (6, sum(len(r.split()) for r in REFS), 0.95)
    # Seeded: the same interval every run (and on every CPU: integer sums, PCG64).
    assert bootstrap_difference(REFS, tier, TORCH) == got
    assert bootstrap_difference(REFS, tier, TORCH, seed=1) != got


def test_identical_transcripts_give_a_zero_interval_and_no_references_give_none():
    same = bootstrap_difference(REFS, TORCH, TORCH)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert bootstrap_difference([None, ""], ["a", "b"], ["a", "c"]) is None


def test_a_tier_worse_on_every_utterance_has_an_interval_above_zero():
    worse = [t + " extra" for t in TORCH]
    got = bootstrap_difference(REFS, worse, TORCH)
    assert got.low > 0 and got.value == pytest.approx(6 / sum(len(r.split()) for r in REFS))


def test_the_interval_narrows_with_more_utterances():
    rng = np.random.default_rng(3)
    refs = [" ".join(f"w{int(i)}" for i in rng.integers(0, 50, 8)) for _ in range(400)]
    torch = list(refs)
    tier = [r if rng.random() > 0.1 else r + " x" for r in refs]
    few = bootstrap_difference(refs[:40], tier[:40], torch[:40])
    many = bootstrap_difference(refs, tier, torch)
    assert many.high - many.low < few.high - few.low


def test_the_parity_report_and_card_carry_the_interval(measured_bundle):
    import json

    report = json.loads((measured_bundle / "parity_report.json").read_text())
    (summary,) = report["sets"].values()
    for tier, facts in summary["tiers"].items():
        delta = facts["wer_delta_vs_pytorch"]
        want = facts["wer_vs_reference"] - summary["pytorch_wer_vs_reference"]
        assert delta["value"] == pytest.approx(want, abs=2e-6), tier
        assert delta["low"] <= delta["value"] <= delta["high"]
        assert delta["utterances"] == summary["clips"]
    card = (measured_bundle / "README.md").read_text()
    assert "vs reference, minus PyTorch's (95 % bootstrap)" in card


def test_a_gate_holds_the_intervals_upper_end():
    from types import SimpleNamespace as NS

    from granite_onnx.parity.harness import gates

    def clips(tier_texts):
        return tuple(
            NS(
                clip=f"c{i}",
                reference_text=ref,
                pytorch_text=torch,
                pytorch_margins=(5.0,),
                tiers=(NS(tier="int8", text=text, error=None, byte_exact=text == torch),),
            )
            for i, (ref, torch, text) in enumerate(zip(REFS, TORCH, tier_texts, strict=True))
        )

    same = gates(clips(TORCH), (), ("int8",), 0.02, "wer", wer_delta_limit=0.01)
    assert [(g.name, g.passed) for g in same] == [
        ("int8_wer_vs_pytorch", True),
        ("int8_wer_delta_vs_pytorch", True),
    ]
    worse = gates(clips([t + " extra" for t in TORCH]), (), ("int8",), 1.0, "wer", wer_delta_limit=0.05)
    delta = next(g for g in worse if g.name == "int8_wer_delta_vs_pytorch")
    assert not delta.passed and "95 % interval" in delta.detail and "\n" not in delta.detail
    assert "int8_wer_delta_vs_pytorch" not in {g.name for g in gates(clips(TORCH), (), ("int8",), 0.02)}
