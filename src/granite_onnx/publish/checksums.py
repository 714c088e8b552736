"""``SHA256SUMS``: the bundle's manifest, in the format ``sha256sum -c`` reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..userfiles import is_file

MANIFEST = "SHA256SUMS"
CHUNK = 1 << 24


def sha256_file(path: Path) -> str:
    """Streamed, so a 7 GB sidecar never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths, sorted), the manifest itself excluded."""
    folder = Path(folder)
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    )


def manifest_text(folder: Path) -> str:
    return "".join(f"{sha256_file(Path(folder) / name)}  {name}\n" for name in bundle_files(folder))


def verify_manifest(folder: Path) -> list[str]:
    """Problems found (empty = every listed file present with its digest, and nothing unlisted)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not is_file(path):
        return [f"{MANIFEST} is missing"]
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{MANIFEST} cannot be read as UTF-8 text ({type(exc).__name__})"]
    listed: dict[str, str] = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            return [f"{MANIFEST} has a malformed line: {line[:80]!r}"]
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return [f"{MANIFEST} lists {name[:80]!r}, which is not a file inside the bundle"]
        listed[name] = digest
    problems = []
    for name, digest in listed.items():
        target = folder / name
        if not is_file(target):
            problems.append(f"{name} is listed in {MANIFEST} but missing")
        elif sha256_file(target) != digest:
            problems.append(f"{name} does not match its sha256 in {MANIFEST}")
    unlisted = sorted(set(bundle_files(folder)) - set(listed))
    if unlisted:
        problems.append(f"files not in {MANIFEST}: {', '.join(unlisted)}")
    return problems
