"""The benchmarks still run (a smoke run at tiny size; their numbers are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

from conftest import CLIPS, REPO

QUANTISE_TIERS = ("int8", "int8w")


def run_bench(script: str, *args: str) -> None:
    """Run ``bench/<script>`` as a user would, from the repository root; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_runtime_benchmark_runs_on_the_tiny_bundle(tiny_bundle, tiny_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--bundle", str(tiny_bundle), "--model-dir", str(tiny_ckpt), "--tokens", "4", "--repeats", "1"]
    run_bench("runtime.py", *args, "--json", str(out))
    result = json.loads(out.read_text())
    assert result["tokens_equal"] is True
    assert result["decode_ms_per_token"]["onnx"] > 0 and result["peak_rss_mib"] > 0


def test_quantise_benchmark_runs_on_a_copy_of_the_tiny_bundle(tiny_bundle, tmp_path):
    bundle, out = tmp_path / "bundle", tmp_path / "quantise_full.json"
    shutil.copytree(tiny_bundle, bundle)
    tiers = [arg for tier in QUANTISE_TIERS for arg in ("--tier", tier)]
    args = ["--bundle", str(bundle), *tiers, "--tokens", "2", "--past", "8", "--clips", str(CLIPS)]
    run_bench("quantise_full.py", *args, "--json", str(out), "--work", str(tmp_path / "work"))
    result = json.loads(out.read_text())
    assert result["fp32"]["decode_step"]["ms_per_token"] > 0
    for tier in QUANTISE_TIERS:
        doc = result["tiers"][tier]
        assert doc["quantise"]["status"] == "ok", doc["quantise"]
        assert doc["quantise"]["peak_rss_mib"] > 0
        assert doc["total_bytes"] > 0 and all(g["bytes"] > 0 for g in doc["graphs"].values())
        assert doc["decode_step"]["ms_per_token"] > 0 and "max_abs_error" in doc["decode_step"]
        assert doc["encoder"]["seconds"] > 0


def test_full_size_bundle_gets_a_tokenizer_whose_audio_token_is_the_configs(tmp_path):
    """The bundle completion for the full-size shape: <|audio|> must land on id 100352 of 100353."""
    spec = importlib.util.spec_from_file_location("quantise_full", REPO / "bench" / "quantise_full.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
        checkpoint, bundle = tmp_path / "checkpoint", tmp_path / "bundle"
        checkpoint.mkdir()
        bundle.mkdir()
        config = {
            "audio_token_index": 100352,
            "text_config": {
                "num_hidden_layers": 40,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "hidden_size": 2048,
                "vocab_size": 100353,
            },
        }
        (checkpoint / "config.json").write_text(json.dumps(config))
        bench.complete_bundle(bundle, checkpoint)
    finally:
        del sys.modules[spec.name]

    from granite_onnx.runtime.prompt import PromptBuilder

    ids = PromptBuilder(bundle).input_ids(300)
    assert ids.count(100352) == 300 and max(ids) == 100352
    for name in ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja"):
        assert (bundle / name).is_file(), name


def test_scale_benchmark_runs_on_the_tiny_bundle(tiny_bundle, tiny_ckpt, tmp_path):
    """bench/scale.py end to end at tiny size: both layouts, PyTorch, a long clip; every run completes."""
    out = tmp_path / "scale.json"
    args = ["--bundle", str(tiny_bundle), "--checkpoint", str(tiny_ckpt), "--work", str(tmp_path / "work")]
    args += ["--tokens", "3", "--seconds", "2", "--long-seconds", "4", "--threads", "1", "--copy-gib", "0.25"]
    run_bench("scale.py", *args, "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"pytorch", "onnx-shared", "onnx-per-graph", "onnx-long-shared"}
    assert all("failed" not in run for run in result["runs"].values()), result["runs"]
    assert result["layouts"]["shared"]["bytes"] < result["layouts"]["per-graph"]["bytes"]
    assert result["bandwidth"]["copy_gb_per_s"] > 0 and result["bandwidth"]["bound_ms_per_token"] > 0
    runs = result["runs"]
    assert runs["onnx-shared"]["tokens"] == runs["onnx-per-graph"]["tokens"]  # same weights, same greedy path
    assert runs["pytorch"]["tokens"] == runs["onnx-per-graph"]["tokens"]
    assert result["figures"]["onnx_e2e_over_pytorch"] > 0


def test_decode_tiers_benchmark_runs_on_the_quantised_tiny_bundle(quantised_bundle, tmp_path):
    out = tmp_path / "tiers.json"
    run_bench(
        "decode_tiers.py",
        "--bundle",
        str(quantised_bundle),
        "--clip",
        str(CLIPS / "jfk.flac"),
        "--steps",
        "3",
        "--tokens",
        "4",
        "--json",
        str(out),
    )
    result = json.loads(out.read_text())
    assert set(result["tiers"]) == {"fp32", "fp16", "int8", "int8s", "int8w"}
    assert result["tiers"]["fp32"]["tokens_equal_fp32"] is True
    assert all(r["decode_ms_median"] > 0 for r in result["tiers"].values())


def test_profile_benchmark_runs_on_the_tiny_bundle(tiny_bundle, tiny_ckpt, tmp_path):
    out = tmp_path / "ops.json"
    run_bench(
        "profile_ops.py",
        "--bundle",
        str(tiny_bundle),
        "--graph",
        "encoder",
        "--threads",
        "1",
        "--seconds",
        "2",
        "--checkpoint",
        str(tiny_ckpt),
        "--json",
        str(out),
    )
    result = json.loads(out.read_text())
    assert result["onnx"]["1"]["kernel_s"] > 0 and "MatMul" in result["onnx"]["1"]["by_op"]
    assert result["pytorch"]["1"]["wall_s"] > 0


def test_frontend_benchmark_runs_on_the_tiny_bundle(tiny_bundle, tmp_path):
    out = tmp_path / "frontend.json"
    run_bench("frontend.py", "--bundle", str(tiny_bundle), "--repeats", "1", "--json", str(out))
    result = json.loads(out.read_text())
    names = {"numpy", "frontend.onnx (float64 inside)", "float32 inside"}
    assert {r["front_end"] for r in result["runs"]} == names
    assert all(r["max_abs_error_vs_numpy"] <= 1e-4 and r["ms_per_30s"] > 0 for r in result["runs"])
