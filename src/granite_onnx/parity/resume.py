"""Parity as a resumable stage: skip the PyTorch comparison when nothing it reads has changed.

Parity is the slowest stage after export (every clip through PyTorch and every tier). Its stamp
covers the bundle's graphs, sidecars and config files, the checkpoint's files, the clips, the options
that change results and the toolchain (see :mod:`granite_onnx.stamps`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint import BUNDLE_CHECKPOINT_FILES, CheckpointSource
from ..fixtures import cache_root
from ..stamps import Stamp, digests, folder_files, stored_report, write_stamp
from ..userfiles import is_dir
from .harness import ParityOptions, run_parity
from .report import REPORT_FILE, ParityReport
from .store import ClipStore

# Options that change how parity runs, not what it finds.
_SPEED_ONLY = ("jobs", "threads", "executor", "address", "worker_cpus")


def parity_stamp(
    bundle: Path, checkpoint: CheckpointSource, clips_dirs: Sequence[Path], options: ParityOptions
) -> Stamp:
    bundle = Path(bundle)
    files = {
        f"bundle/{p.name}": p
        for p in sorted(bundle.iterdir())
        if p.is_file()
        and (
            p.suffix in (".onnx", ".onnx_data")
            or p.name in BUNDLE_CHECKPOINT_FILES
            or p.name.startswith("quantise_")
        )
    }
    files |= folder_files(checkpoint.path, prefix="checkpoint/")
    for folder in clips_dirs:
        files |= folder_files(Path(folder), prefix=f"clips/{Path(folder).name}/")
    doc = {k: v for k, v in asdict(options).items() if k not in _SPEED_ONLY}
    doc["checkpoint"] = {"model_id": checkpoint.model_id, "is_fixture": checkpoint.is_fixture}
    return Stamp(stage="parity", inputs=digests(files), options=doc)


@dataclass(frozen=True)
class ParityStageResult:
    """The report as written (``document``), and the fresh report object when parity ran."""

    document: dict
    report: ParityReport | None
    skipped: bool

    @property
    def passed(self) -> bool:
        return bool(self.document.get("passed"))

    def failed_gates(self) -> list[dict]:
        return [g for g in self.document.get("gates", []) if not g.get("passed")]


def parity_stage(
    bundle: Path,
    checkpoint: CheckpointSource,
    clips_dirs: Path | Sequence[Path],
    options: ParityOptions | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> ParityStageResult:
    """Run parity and write its report (and stamp) into ``bundle``, unless it is up to date."""
    bundle, options = Path(bundle), options or ParityOptions()
    folders = [Path(clips_dirs)] if isinstance(clips_dirs, str | Path) else [Path(f) for f in clips_dirs]
    readable = bundle.is_dir() and all(is_dir(f) for f in folders) and is_dir(Path(checkpoint.path))
    # Missing folders are left to run_parity, whose errors name them and the fix.
    stamp = parity_stamp(bundle, checkpoint, folders, options) if readable else None
    stored = stored_report(bundle, stamp, REPORT_FILE, force) if stamp is not None else None
    if stored is not None:
        return ParityStageResult(stored, None, skipped=True)
    # Finished clips are kept under the stamp's key: a run stopped part way resumes with the rest.
    store = ClipStore.for_key(cache_root() / "parity-runs", stamp.key()) if stamp is not None else None
    if store is not None and force:
        store.clear()
    report = run_parity(bundle, checkpoint, folders, options, progress, store)
    report.write(bundle)
    if stamp is not None:
        write_stamp(bundle, stamp.with_outputs(bundle, [REPORT_FILE]))
    if store is not None:
        store.clear()
    return ParityStageResult(report.to_json(), report, skipped=False)
