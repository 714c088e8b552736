"""The benchmarks still run (a smoke run at tiny size; their numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_runtime_benchmark_runs_on_the_tiny_bundle(tiny_bundle, tiny_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "runtime.py"),
            "--bundle",
            str(tiny_bundle),
            "--model-dir",
            str(tiny_ckpt),
            "--tokens",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tokens_equal"] is True
    assert result["decode_ms_per_token"]["onnx"] > 0 and result["peak_rss_mib"] > 0
