"""``granite-onnx bundle``: the publishable folder, complete and checksummed.

It holds the graphs of every tier, the processor files, the metadata and model card, the stage
reports, the Apache-2.0 ``LICENSE``, a ``reproduce/`` folder (pinned tool versions and the exact
commands) and ``SHA256SUMS``. It refuses a bundle whose parity gates failed (or were never run)
unless forced, and a forced bundle says so on its card.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..checkpoint import BUNDLE_CHECKPOINT_FILES
from ..errors import BundleError
from ..metadata.card import render_card, reproduce_commands
from ..metadata.schema import validate_metadata
from ..metadata.stage import METADATA_FILE
from ..parity.report import REPORT_FILE as PARITY_REPORT
from ..runtime.prompt import PROMPTS_FILE
from ..staging import staged_dir
from ..userfiles import is_file, read_json_object
from .checksums import MANIFEST, manifest_text

CARRIED_SUFFIXES = (".onnx", ".onnx_data")
CARRIED_FILES = (*BUNDLE_CHECKPOINT_FILES, PROMPTS_FILE, "export_report.json", PARITY_REPORT)


class GateRefusal(BundleError):
    """The parity gates failed or were not measured, and --force was not given."""


@dataclass(frozen=True)
class AssembleResult:
    dest: Path
    files: tuple[str, ...]
    forced: bool
    failed_gates: tuple[str, ...]


def failed_gates(metadata: dict) -> list[str]:
    """Names of failed gates; a bundle never measured counts as failing ``parity_measured``."""
    parity = metadata.get("parity") or {}
    gates = parity.get("gates") or []
    if not gates:
        return ["parity_measured"]
    return [g["name"] for g in gates if not g.get("passed")]


def _place(src: Path, dst: Path) -> None:
    """Copy (never hard-link: onnx.checker refuses external data files with several links)."""
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def reproduce_script(metadata: dict) -> str:
    """The exact commands that regenerate this bundle, with the tool versions that made it."""
    tools = metadata["toolchain"]
    pins = " ".join(
        f"'{name}=={str(tools[name]).split('+')[0]}'"
        for name in ("torch", "transformers", "onnx", "onnxruntime", "numpy")
        if tools.get(name)
    )
    lines = [
        "#!/usr/bin/env bash",
        "# Regenerates this bundle with the versions recorded in granite_export_metadata.json.",
        f"# Run it in a checkout of granite-onnx {tools.get('granite-onnx')} (`make setup` creates .venv),",
        "# with the clips/ folder of that checkout; --model-dir names the source checkpoint folder.",
        "set -euo pipefail",
        f"pip install {pins}",
        *reproduce_commands(metadata, "bundle"),
        "granite-onnx bundle --bundle bundle --dest publish",
        "(cd publish && sha256sum -c SHA256SUMS)",
    ]
    return "\n".join(lines) + "\n"


def _license_text() -> str:
    return resources.files("granite_onnx.publish").joinpath("LICENSE-Apache-2.0.txt").read_text()


def assemble(bundle: Path, dest: Path, force: bool = False) -> AssembleResult:
    """Assemble ``bundle`` into ``dest`` (written beside it, renamed into place when whole)."""
    bundle = Path(bundle)
    meta_path = bundle / METADATA_FILE
    again = f"run `granite-onnx metadata --bundle {bundle}` again"
    if not is_file(meta_path):
        raise BundleError(f"{meta_path} is missing: run `granite-onnx metadata --bundle {bundle}` first")
    metadata = read_json_object(meta_path, BundleError, again)
    try:  # what the metadata stage wrote follows the schema; anything else was edited or truncated
        validate_metadata(metadata)
    except BundleError as exc:
        raise BundleError(f"{meta_path}: {exc}: {again}") from exc
    failed = failed_gates(metadata)
    if failed and not force:
        raise GateRefusal(
            f"refusing to assemble {bundle}: gates not passed ({', '.join(failed)}); "
            "fix them or pass --force (the card will say so)"
        )
    if failed:
        metadata["publication"] = {"forced": True, "failed_gates": failed}
    with staged_dir(Path(dest)) as stage:
        for path in sorted(bundle.iterdir()):
            if (
                path.suffix in CARRIED_SUFFIXES
                or path.name in CARRIED_FILES
                or path.name.startswith("quantise_")
            ):
                _place(path, stage / path.name)
        (stage / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        (stage / "README.md").write_text(render_card(metadata), encoding="utf-8")
        (stage / "LICENSE").write_text(_license_text(), encoding="utf-8")
        (stage / "reproduce").mkdir()
        script = stage / "reproduce" / "regenerate.sh"
        script.write_text(reproduce_script(metadata), encoding="utf-8")
        script.chmod(0o755)
        (stage / MANIFEST).write_text(manifest_text(stage), encoding="utf-8")
        files = tuple(sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()))
    return AssembleResult(Path(dest), files, bool(failed), tuple(failed))
