"""Write a stage's output into a temporary folder and move it into place only when whole.

An interrupted or failed stage leaves the previous good folder untouched and no half-written
graph where a user (or the next stage) would look. Every temporary is a hidden sibling named
``.<target>.<kind>.granite-tmp-<pid>-<random>``: Ctrl-C and SIGTERM remove it on the way out, and a
run that could not clean up (SIGKILL, a power cut) leaves one that the next run sweeps away once
its process is gone (:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GraniteOnnxError

TEMP_MARK = "granite-tmp"
_TEMP_NAME = re.compile(rf"^\..+\.{TEMP_MARK}-(\d+)-")


def temp_prefix(target: Path, kind: str) -> str:
    """The name prefix of a temporary for ``target``: hidden, and carrying this process's id."""
    return f".{Path(target).name}.{kind}.{TEMP_MARK}-{os.getpid()}-"


def make_temp_dir(target: Path, kind: str) -> Path:
    """An empty temporary folder beside ``target`` (same filesystem, so renames are atomic)."""
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=temp_prefix(target, kind), dir=target.resolve().parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(folder: Path) -> list[Path]:
    """Remove temporaries in ``folder`` whose process no longer exists; return what was removed.

    A SIGKILLed stage cannot clean up after itself; this runs at the start of the next stage that
    writes there. A temporary of a live process (a concurrent run) is left alone.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if match is None or _alive(int(match[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def check_output_dir(out_dir: Path) -> None:
    """Fail early, with the fix, when ``out_dir`` cannot become a bundle folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GraniteOnnxError(f"--out-dir {out_dir} is a file, not a folder: choose another path")
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraniteOnnxError(f"cannot create {parent}: {exc.strerror} (choose another --out-dir)") from exc
    if not parent.is_dir():
        raise GraniteOnnxError(f"cannot create {out_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise GraniteOnnxError(f"cannot write to {parent}: no write permission (choose another --out-dir)")
    sweep_stale(parent)
    sweep_stale(out_dir)


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out_dir``; on success it replaces ``out_dir``.

    On any exception (Ctrl-C included) the staging folder is removed and ``out_dir`` is left as it
    was. Stages that add small files to an existing bundle use :func:`write_text_atomic` instead.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    stage = make_temp_dir(out_dir, "partial")
    try:
        yield stage
        os.chmod(stage, 0o755)
        replace_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target`` with renames, removing the old folder last."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(target, "old"), dir=target.resolve().parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> Path:
    """Write a small file beside its target and rename it into place (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path, "write"), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def merge_into(folder: Path, staged: Path) -> list[str]:
    """Add every file of ``staged`` to ``folder`` (replacing same-named files) as one rename.

    A hard-linked copy of ``folder`` receives the new files and is swapped in with
    :func:`replace_dir`, so a reader sees the old folder or the whole new one, never a tier with
    some of its graphs. Hard links cost no space; where the filesystem refuses them, the files are
    renamed in one by one, sidecars before graphs and reports last. ``staged`` is consumed.
    """
    folder, staged = Path(folder), Path(staged)
    names = sorted(p.name for p in staged.iterdir())
    order = sorted(names, key=lambda n: (n.endswith(".json"), n.endswith(".onnx"), n))
    snapshot = make_temp_dir(folder, "merge")
    try:
        shutil.copytree(folder, snapshot, copy_function=os.link, dirs_exist_ok=True)
    except OSError:
        shutil.rmtree(snapshot, ignore_errors=True)
        for name in order:
            os.replace(staged / name, folder / name)
        shutil.rmtree(staged, ignore_errors=True)
        return names
    try:
        for name in order:
            os.replace(staged / name, snapshot / name)
        os.chmod(snapshot, 0o755)
        replace_dir(snapshot, folder)
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    shutil.rmtree(staged, ignore_errors=True)
    return names
