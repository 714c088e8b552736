"""Shared pytest fixtures. The tiny checkpoint comes first; other fixtures follow below it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# Run from a source checkout without `pip install -e .`: put src/ on the path if the package is not installed.
if importlib.util.find_spec("granite_onnx") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "clips"


# --- tiny checkpoint -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny Granite Speech checkpoint, written once per session (a few seconds, ~1 MB).

    Treat it as read-only: a test that needs a modified checkpoint copies it into its own tmp_path.
    """
    from granite_onnx.fixtures import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint")


# --- reference model and exported bundle -------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt: Path):
    """The tiny checkpoint loaded as transformers' PyTorch model (eager, FP32): the reference."""
    from granite_onnx.checkpoint import load_reference_model

    return load_reference_model(tiny_ckpt)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FP32 bundle exported from the tiny checkpoint, once per session (read-only for tests)."""
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.export.stage import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(CheckpointSource(tiny_ckpt), out)
    return out


@pytest.fixture(scope="session")
def clip_manifest() -> list[dict]:
    import json

    return json.loads((CLIPS / "manifest.json").read_text())["clips"]


@pytest.fixture(scope="session")
def measured_bundle(tiny_bundle: Path, tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with parity (16 new tokens per clip keeps it to seconds) and metadata.

    Read-only for tests: copy it before changing anything.
    """
    import shutil

    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.metadata.stage import write_metadata
    from granite_onnx.parity.harness import ParityOptions, run_parity

    bundle = tmp_path_factory.mktemp("measured") / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    run_parity(bundle, CheckpointSource(tiny_ckpt), CLIPS, ParityOptions(max_new_tokens=16)).write(bundle)
    write_metadata(bundle)
    return bundle


@pytest.fixture(scope="session")
def quantised_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with the four default tiers written by the quantise stage (read-only)."""
    import shutil

    from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle
    from granite_onnx.quantise.tiers import DEFAULT_TIERS

    bundle = tmp_path_factory.mktemp("quantised") / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    for tier in DEFAULT_TIERS:
        quantise_bundle(bundle, tier, QuantiseOptions(clips=CLIPS))
    return bundle


def family_checkpoint(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, Path]:
    """A registry fixture's tiny checkpoint (``--model name``: tiny-plus, tiny-lora) and its exported bundle,
    written under the session's temporary folder (read-only for tests)."""
    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.export.stage import export_bundle
    from granite_onnx.fixtures import fixture_spec, write_tiny_checkpoint

    root = tmp_path_factory.mktemp(name)
    ckpt = write_tiny_checkpoint(root / "checkpoint", fixture_spec(name))
    export_bundle(CheckpointSource(ckpt), root / name)
    return ckpt, root / name


def run_whole_pipeline(bundle: Path, ckpt: Path, ungated: tuple[str, ...] = ()) -> dict:
    """Every default quantise tier, parity (12 tokens), metadata and card, verify, bundle and publish
    --dry-run on ``bundle`` (a writable copy), asserting each step; returns the metadata."""
    import json

    from click.testing import CliRunner

    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.cli import cli
    from granite_onnx.metadata.stage import write_metadata
    from granite_onnx.parity.harness import ParityOptions, run_parity
    from granite_onnx.quantise.stage import QuantiseOptions, quantise_bundle
    from granite_onnx.quantise.tiers import DEFAULT_TIERS
    from granite_onnx.verify import verify_bundle

    for tier in DEFAULT_TIERS:
        quantise_bundle(bundle, tier, QuantiseOptions(clips=CLIPS))
    # Random weights: quantised tiers are gated on diverging from PyTorch only at its near-ties, with the
    # token budget `make all` uses (the near-tie limit is a percentile of the margins of those steps).
    options = ParityOptions(max_new_tokens=200, ungated=ungated, quantised_gate="near-tie")
    report = run_parity(bundle, CheckpointSource(ckpt), CLIPS, options)
    report.write(bundle)
    assert report.passed, report.failed_gates()
    assert set(report.tiers) == {"fp32", *DEFAULT_TIERS}
    write_metadata(bundle)
    failed = [c for c in verify_bundle(bundle) if not c.ok]
    assert not failed, failed
    publish = bundle.parent / f"{bundle.name}-publish"
    assert CliRunner().invoke(cli, ["bundle", "--bundle", str(bundle), "--dest", str(publish)]).exit_code == 0
    dry = CliRunner().invoke(cli, ["publish", "--bundle", str(publish), "--repo-id", "me/model", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    meta = json.loads((bundle / "granite_export_metadata.json").read_text())
    for name in (g for g, facts in meta["graphs"].items() if facts["tier"] in ("fp32", "int8")):
        assert f"{name}.onnx" in dry.output  # every graph of the entry's contract, FP32 and a tier
    return meta


def user_error(args: list[str]) -> str:
    """Run the CLI on ``args``; it must fail with exit 2 and one ``error:`` line (no traceback)."""
    from click.testing import CliRunner

    from granite_onnx.cli import cli

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]
