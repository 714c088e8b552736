"""Stamp files: skip a stage whose inputs, options and toolchain have not changed since it last ran.

A stage's stamp records content hashes of what it read, the options it ran with, the toolchain
(exact versions plus a hash of this package's own source, so an edited checkout re-runs) and the
hashes of what it wrote. The stage is up to date when all of that matches and every output is
still on disk with the recorded hash: a hand-edited or truncated output is redone, never trusted.
Stamps are hidden ``.granite-onnx-<stage>.stamp`` files inside the bundle; they are not published.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .staging import write_text_atomic
from .toolchain import versions

STAMP_SUFFIX = ".stamp"
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=4096)
def _digest_cached(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes; cached per (inode, size, mtime) so one run hashes a file once."""
    st = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def digests(paths: Mapping[str, Path]) -> dict[str, str]:
    """Label -> sha256 for each file (labels are what the stamp shows, e.g. a name or a role)."""
    return {label: file_digest(p) for label, p in sorted(paths.items())}


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every visible regular file directly in ``folder`` (symlinks followed, as in a Hub snapshot)."""
    folder = Path(folder)
    return {
        f"{prefix}{p.name}": p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.is_file()
    }


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """One hash over this package's Python source: a changed checkout must not reuse old outputs."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def toolchain() -> dict:
    """The versions a stage's outputs depend on."""
    return {**versions(), "granite-onnx-source": source_digest()}


@dataclass(frozen=True)
class Stamp:
    """What one stage read, how it ran, and what it wrote."""

    stage: str
    inputs: dict[str, str]  # label -> sha256
    options: dict
    toolchain: dict = field(default_factory=toolchain)
    outputs: dict[str, str] = field(default_factory=dict)  # file name in the bundle -> sha256

    def key(self) -> dict:
        """Everything that decides the outputs (the outputs themselves excluded)."""
        return {
            "stage": self.stage,
            "inputs": self.inputs,
            "options": self.options,
            "toolchain": self.toolchain,
        }

    def with_outputs(self, folder: Path, names: Iterable[str]) -> Stamp:
        folder = Path(folder)
        return Stamp(
            self.stage, self.inputs, self.options, self.toolchain, digests({n: folder / n for n in names})
        )


def stamp_path(folder: Path, stage: str) -> Path:
    return Path(folder) / f".granite-onnx-{stage}{STAMP_SUFFIX}"


def write_stamp(folder: Path, stamp: Stamp) -> Path:
    text = json.dumps(asdict(stamp), indent=2, sort_keys=True, default=str) + "\n"
    return write_text_atomic(stamp_path(folder, stamp.stage), text)


def read_stamp(folder: Path, stage: str) -> Stamp | None:
    """The stage's last stamp in ``folder``; None when absent or unreadable (which means: re-run)."""
    path = stamp_path(folder, stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Stamp(**data)
    except (OSError, ValueError, TypeError):
        return None


def is_current(folder: Path, stamp: Stamp) -> bool:
    """True when ``folder``'s stamp for this stage has the same key and every output is intact."""
    old = read_stamp(folder, stamp.stage)
    if (
        old is None
        or not old.outputs
        or json.dumps(old.key(), sort_keys=True, default=str)
        != json.dumps(stamp.key(), sort_keys=True, default=str)
    ):
        return False
    folder = Path(folder)
    for name, digest in old.outputs.items():
        path = folder / name
        if not path.is_file() or file_digest(path) != digest:
            return False
    return True


def stored_report(folder: Path, stamp: Stamp, report: str, force: bool = False) -> dict | None:
    """The report a stage wrote last time when it is up to date (see :func:`is_current`), else None.

    ``report`` is one of the stamp's outputs, so its hash was just checked and it parses.
    """
    if force or not is_current(folder, stamp):
        return None
    return json.loads((Path(folder) / report).read_text(encoding="utf-8"))
