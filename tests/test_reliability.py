"""Interruptions, a full disk and re-runs: the previous good bundle survives, and unchanged work is skipped.

Kill tests run the real CLI in a subprocess and signal it while its staging folder exists, i.e. part-way
through the stage; the previous bundle must be byte-identical afterwards.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from granite_onnx.cli import cli
from granite_onnx.staging import TEMP_MARK, check_output_dir

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "clips"


def tree(folder: Path) -> dict[str, str]:
    """Every file (hidden ones included) with its sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temporaries(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.iterdir() if TEMP_MARK in p.name]


def _terminal_sigint() -> None:
    """Ctrl-C as a terminal delivers it. A shell that runs the suite in the background (``cmd &``) starts
    it with SIGINT ignored, every child inherits that, and Python then installs no KeyboardInterrupt
    handler: the CLI would (rightly) ignore the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(*args: str, preexec_fn=None, **kwargs) -> subprocess.Popen:
    def setup() -> None:
        _terminal_sigint()
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen(
        [sys.executable, "-m", "granite_onnx.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=setup,
        **kwargs,
    )


def wait_for_staging(parent: Path, proc: subprocess.Popen, kind: str, timeout: float = 120.0) -> Path:
    """The staging folder of ``proc`` once it holds something: the stage is under way, not finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in parent.iterdir():
            if f".{kind}.{TEMP_MARK}-{proc.pid}-" in p.name and p.is_dir() and any(p.iterdir()):
                return p
        if proc.poll() is not None:
            pytest.fail(
                f"the stage ended (rc {proc.returncode}) before it was interrupted: {proc.stderr.read()}"
            )
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no staging folder appeared")


@pytest.fixture()
def bundle(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    return out


# --- interruptions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_part_way_through_export_unwinds_cleanly(tiny_ckpt, bundle, sig):
    before = tree(bundle)
    proc = cli_process("export", "--model-dir", str(tiny_ckpt), "--out-dir", str(bundle), "--force")
    wait_for_staging(bundle.parent, proc, "partial")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(sig).name})") and "Traceback" not in stderr
    assert tree(bundle) == before
    assert temporaries(bundle.parent, bundle) == []


def test_sigkill_part_way_leaves_the_bundle_and_the_next_run_sweeps_the_remains(tiny_ckpt, bundle):
    before = tree(bundle)
    proc = cli_process("export", "--model-dir", str(tiny_ckpt), "--out-dir", str(bundle), "--force")
    staging = wait_for_staging(bundle.parent, proc, "partial")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert tree(bundle) == before  # the previous good bundle is intact
    assert staging.exists()  # SIGKILL cannot be caught: the half-written stage stays, hidden...
    check_output_dir(bundle)  # ...until the next stage that writes here starts
    assert temporaries(bundle.parent, bundle) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_during_quantise_calibration_leaves_the_bundle_as_it_was(bundle, sig):
    before = tree(bundle)
    proc = cli_process("quantise", "--bundle", str(bundle), "--tier", "int8s", "--clips", str(CLIPS))
    wait_for_staging(bundle.parent, proc, "quantise-int8s")
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode in (128 + sig, -sig)
    assert tree(bundle) == before
    check_output_dir(bundle)
    assert temporaries(bundle.parent, bundle) == []


def test_a_live_runs_staging_folder_is_not_swept(bundle):
    from granite_onnx.staging import make_temp_dir, sweep_stale

    mine = make_temp_dir(bundle, "partial")  # this process is alive
    assert sweep_stale(bundle.parent) == []
    assert mine.is_dir()
    shutil.rmtree(mine)


# --- a full disk ------------------------------------------------------------------------------------------


def test_a_full_disk_during_export_is_one_line_and_leaves_the_bundle(tiny_ckpt, bundle, monkeypatch):
    from granite_onnx.export import writer

    before = tree(bundle)

    def disk_full(model, base, path):
        Path(path).write_bytes(b"\0" * 1000)  # a half-written graph...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # ...and the disk is full

    monkeypatch.setattr(writer, "write_with_sidecar", disk_full)
    result = CliRunner().invoke(
        cli, ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(bundle), "--force"]
    )
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: could not write") and "No space left on device" in line
    assert tree(bundle) == before
    assert temporaries(bundle.parent, bundle) == []


def test_a_file_size_limit_hit_while_writing_is_one_line_and_leaves_the_bundle(tiny_ckpt, bundle):
    """A real short write: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG), like a full disk."""
    before = tree(bundle)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = cli_process(
        "export", "--model-dir", str(tiny_ckpt), "--out-dir", str(bundle), "--force", preexec_fn=limit
    )
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: could not write")
    assert "Traceback" not in stderr
    assert tree(bundle) == before
    assert temporaries(bundle.parent, bundle) == []


def test_a_full_disk_during_quantise_leaves_the_bundle(bundle, monkeypatch):
    import dataclasses

    from granite_onnx.quantise.tiers import TIERS

    before = tree(bundle)

    def disk_full(job):
        Path(job.dst).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(job.dst))

    monkeypatch.setitem(TIERS, "int8", dataclasses.replace(TIERS["int8"], write_graph=disk_full))
    result = CliRunner().invoke(cli, ["quantise", "--bundle", str(bundle), "--tier", "int8"])
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr.strip().splitlines()[-1]
    assert tree(bundle) == before
    assert temporaries(bundle.parent, bundle) == []


def test_no_write_permission_is_one_line(tiny_ckpt, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then the check itself is simulated
        locked.chmod(0o555)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    result = CliRunner().invoke(
        cli, ["export", "--model-dir", str(tiny_ckpt), "--out-dir", str(locked / "bundle")]
    )
    locked.chmod(0o755)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "no write permission" in line and str(locked) in line


def test_a_refused_write_part_way_is_one_line(bundle, monkeypatch):
    """EACCES/EROFS met mid-stage (a read-only remount, an ACL) is a user error too, not a traceback."""
    from granite_onnx.quantise import stage

    def refused(target, kind):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(target))

    monkeypatch.setattr(stage, "make_temp_dir", refused)
    result = CliRunner().invoke(cli, ["quantise", "--bundle", str(bundle), "--tier", "int8"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: permission denied on")


# --- resumable stages -------------------------------------------------------------------------------------


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_export_skips_an_up_to_date_bundle_and_redoes_a_changed_one(tiny_ckpt, tmp_path):
    out = tmp_path / "b"
    args = ("export", "--model-dir", str(tiny_ckpt), "--out-dir", str(out))
    _run(*args)
    first = tree(out)
    mtime = (out / "encoder.onnx").stat().st_mtime_ns
    assert "up to date" in _run(*args).output
    assert tree(out) == first and (out / "encoder.onnx").stat().st_mtime_ns == mtime

    assert "up to date" not in _run(*args, "--force").output  # --force re-runs
    assert (out / "encoder.onnx").stat().st_mtime_ns != mtime

    (out / "decode_step.onnx_data").write_bytes(b"truncated")  # a damaged output is redone, not trusted
    assert "up to date" not in _run(*args).output
    assert tree(out)["decode_step.onnx_data"] == first["decode_step.onnx_data"]

    assert "up to date" not in _run(*args, "--no-check").output  # other options: other stamp


def test_export_redoes_a_bundle_whose_checkpoint_changed(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    out = tmp_path / "b"
    args = ("export", "--model-dir", str(ckpt), "--out-dir", str(out))
    _run(*args)
    (ckpt / "generation_config.json").write_text((ckpt / "generation_config.json").read_text() + "\n")
    assert "up to date" not in _run(*args).output


def test_quantise_skips_an_up_to_date_tier_and_redoes_it_when_options_change(bundle):
    args = ("quantise", "--bundle", str(bundle), "--tier", "int8")
    _run(*args)
    first = tree(bundle)
    assert "tier int8 is up to date" in _run(*args).output
    assert tree(bundle) == first
    again = _run(*args, "--exclude", "/lm_head/MatMul").output
    assert "up to date" not in again
    assert tree(bundle)["decode_step_int8.onnx"] != first["decode_step_int8.onnx"]


def test_parity_skips_when_nothing_it_reads_changed(tiny_ckpt, bundle):
    args = ("parity", "--bundle", str(bundle), "--model-dir", str(tiny_ckpt), "--clips", str(CLIPS))
    args += ("--tier", "fp32", "--max-new-tokens", "4")
    first = _run(*args)
    assert "up to date" not in first.output
    report = (bundle / "parity_report.json").read_bytes()
    assert "is up to date" in _run(*args).output
    assert (bundle / "parity_report.json").read_bytes() == report
    assert "up to date" not in _run(*args, "--force").output


# --- graphs that do not belong ----------------------------------------------------------------------------


def test_a_graph_copied_in_from_another_export_is_refused(bundle, tmp_path):
    other_ckpt = tmp_path / "other-ckpt"
    assert CliRunner().invoke(cli, ["fixture", str(other_ckpt), "--seed", "1"]).exit_code == 0
    other = tmp_path / "other"
    _run("export", "--model-dir", str(other_ckpt), "--out-dir", str(other), "--graph", "encoder")
    for name in ("encoder.onnx", "encoder.onnx_data"):
        shutil.copyfile(other / name, bundle / name)
    result = CliRunner().invoke(cli, ["transcribe", "--bundle", str(bundle), str(CLIPS / "jfk.flac")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "encoder.onnx comes from another export" in line


def test_quantised_graphs_carry_the_export_id_of_their_source(quantised_bundle):
    from granite_onnx.identity import read_export_id

    ids = {read_export_id(p) for p in quantised_bundle.glob("*.onnx")}
    assert len(ids) == 1 and None not in ids


# --- the README's fault table ----------------------------------------------------------------------------


def test_every_row_of_the_readme_fault_table_names_a_test_that_exists():
    import re

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## When something goes wrong", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "tests/" in line]
    assert len(rows) >= 30
    for row in rows:
        ref = re.search(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?`", row)
        assert ref, row
        source = (REPO / ref[1]).read_text(encoding="utf-8")
        assert re.search(rf"^def {ref[2]}\(", source, re.M), f"{ref[1]} has no {ref[2]}"
        if ref[3]:
            assert f'"{ref[3]}"' in source, f"{ref[1]} has no case {ref[3]}"
