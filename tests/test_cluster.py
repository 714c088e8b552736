"""Parity on a local Ray cluster (parity/cluster.py) and resumable runs (parity/store.py): the same report as
``--jobs 1``, a killed worker retried with nothing lost, finished clips kept by a restarted run."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from conftest import CLIPS

from granite_onnx.errors import GraniteOnnxError
from granite_onnx.parity.clips import load_clips
from granite_onnx.parity.harness import ParityOptions, run_parity
from granite_onnx.parity.store import ClipStore

ray = pytest.importorskip("ray", reason="SKIPPED LOUDLY: Ray (granite-onnx[cluster]) is not installed")

from granite_onnx.parity.cluster import run_on_ray  # noqa: E402

TOKENS = 12


def _report(bundle: Path, ckpt: Path, **options) -> dict:
    from granite_onnx.checkpoint import CheckpointSource

    report = run_parity(
        bundle, CheckpointSource(ckpt), CLIPS, ParityOptions(max_new_tokens=TOKENS, **options)
    )
    return report.to_json()


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module (run_on_ray joins it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_bundle, tiny_ckpt) -> dict:
    return _report(tiny_bundle, tiny_ckpt)


def test_a_2_worker_ray_cluster_gives_the_same_report_as_jobs_1_and_2(
    cluster, tiny_bundle, tiny_ckpt, reference
):
    on_ray = _report(tiny_bundle, tiny_ckpt, executor="ray", jobs=2)
    assert on_ray == reference
    assert _report(tiny_bundle, tiny_ckpt, jobs=2) == reference
    assert len(reference["multi_clip_parity"]) == len(load_clips(CLIPS))


def test_a_worker_killed_mid_run_is_retried_and_nothing_is_lost(
    cluster, tiny_bundle, tiny_ckpt, reference, tmp_path
):
    args = (tiny_bundle, tiny_ckpt, ("fp32",), TOKENS, None)
    clips = load_clips(CLIPS)
    pids, killed, ticks = [], [], []

    def on_start(actors):
        pids.extend(ray.get([a.pid.remote() for a in actors]))

    def tick(done, total, what):
        ticks.append(done)
        if done == 1 and not killed:  # one clip in: kill a worker that is busy with another
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    store = ClipStore(tmp_path / "store")
    results = run_on_ray(args, clips, 2, store, tick, on_start=on_start)
    assert killed and [r.clip for r in results] == [c.name for c in clips]
    assert [asdict(r) for r in results] == list(reference["multi_clip_parity"])
    assert ticks[-1] == len(clips)
    assert sorted(store.load()) == sorted(c.name for c in clips)  # every clip saved as it finished


def test_a_restarted_run_does_only_the_rest(cluster, tiny_bundle, tiny_ckpt, reference, tmp_path):
    """Two clips are in the store from an earlier run (one doctored, to show it is kept, not redone)."""
    from granite_onnx.parity.store import clip_from_json

    clips = load_clips(CLIPS)
    store = ClipStore(tmp_path / "store")
    first, second = (clip_from_json(c) for c in reference["multi_clip_parity"][:2])
    store.save(replace(first, pytorch_text="kept from the earlier run"))
    store.save(second)
    messages = []
    args = (tiny_bundle, tiny_ckpt, ("fp32",), TOKENS, None)
    results = run_on_ray(args, clips, 2, store, lambda d, t, what: messages.append((d, what)))
    assert messages[0] == (2, "2 clips kept from an earlier run")
    assert results[0].pytorch_text == "kept from the earlier run"
    assert [asdict(r) for r in results[1:]] == list(reference["multi_clip_parity"][1:])


def test_the_local_executor_resumes_from_the_store_too(tiny_bundle, tiny_ckpt, reference, tmp_path):
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.parity.store import clip_from_json

    store = ClipStore(tmp_path / "store")
    store.save(replace(clip_from_json(reference["multi_clip_parity"][0]), pytorch_text="kept"))
    options = ParityOptions(max_new_tokens=TOKENS)
    report = run_parity(tiny_bundle, CheckpointSource(tiny_ckpt), CLIPS, options, store=store).to_json()
    assert report["multi_clip_parity"][0]["pytorch_text"] == "kept"
    assert list(report["multi_clip_parity"][1:]) == list(reference["multi_clip_parity"][1:])


def test_the_parity_stage_clears_its_store_once_the_report_is_written(measured_bundle, tiny_ckpt, tmp_path):
    import shutil

    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.parity.resume import parity_stage

    bundle = tmp_path / "tiny"
    shutil.copytree(measured_bundle, bundle)
    os.environ["GRANITE_ONNX_CACHE"], saved = str(tmp_path / "cache"), os.environ.get("GRANITE_ONNX_CACHE")
    try:
        parity_stage(bundle, CheckpointSource(tiny_ckpt), CLIPS, ParityOptions(max_new_tokens=4), force=True)
    finally:
        if saved is None:
            os.environ.pop("GRANITE_ONNX_CACHE")
        else:
            os.environ["GRANITE_ONNX_CACHE"] = saved
    runs = tmp_path / "cache" / "parity-runs"
    assert not runs.exists() or not any(runs.iterdir())
    assert json.loads((bundle / "parity_report.json").read_text())["passed"]


def test_without_ray_the_executor_is_a_one_line_error(tiny_bundle, tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(
        GraniteOnnxError, match=r"needs Ray, which is not installed: pip install 'granite-onnx\[cluster\]'"
    ):
        _report(tiny_bundle, tiny_ckpt, executor="ray", jobs=2)


def test_the_parity_command_runs_on_ray(cluster, measured_bundle, tmp_path):
    import shutil

    from click.testing import CliRunner

    from granite_onnx.cli import cli

    bundle = tmp_path / "tiny"
    shutil.copytree(measured_bundle, bundle)
    args = ["parity", "--bundle", str(bundle), "--model", "tiny", "--clips", str(CLIPS), "--force"]
    result = CliRunner().invoke(cli, [*args, "--executor", "ray", "--jobs", "2", "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output
    on_ray = json.loads((bundle / "parity_report.json").read_text())
    local = json.loads((measured_bundle / "parity_report.json").read_text())  # --jobs 1, 16 tokens
    assert on_ray["multi_clip_parity"] == local["multi_clip_parity"] and on_ray["gates"] == local["gates"]
    message = CliRunner().invoke(cli, [*args, "--address", "127.0.0.1:1"]).output
    assert "--address goes with --executor ray" in message
