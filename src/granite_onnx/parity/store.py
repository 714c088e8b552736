"""Finished clips of a parity run, kept as they finish, so a stopped run resumes with the rest.

Parity over a dataset takes hours; a killed driver or a lost cluster must not cost the clips already
measured. Each finished :class:`ClipParity` is written as one JSON file (atomically: a temporary file,
then a rename) into a folder named by the run's stamp, which covers the bundle, checkpoint, clips,
options and toolchain (:mod:`granite_onnx.parity.resume`). A run with another stamp never reads them,
and the folder is removed once the report is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from .report import ClipParity, TierTranscript


def clip_from_json(data: dict) -> ClipParity:
    """The inverse of ``asdict`` for a :class:`ClipParity` (JSON floats round-trip exactly)."""
    tiers = tuple(TierTranscript(**t) for t in data["tiers"])
    return ClipParity(**{**data, "tiers": tiers, "pytorch_margins": tuple(data["pytorch_margins"])})


class ClipStore:
    """One run's finished clips, by clip name."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def for_key(cls, root: Path, key: dict) -> ClipStore:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return cls(Path(root) / digest)

    def _path(self, name: str) -> Path:
        return self.folder / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".json")

    def load(self) -> dict[str, ClipParity]:
        """Every clip finished so far (a file that does not parse, from a crash mid-rename, is ignored)."""
        found = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                clip = clip_from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError):
                continue
            found[clip.clip] = clip
        return found

    def save(self, clip: ClipParity) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(clip.clip)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(clip)))
        os.replace(tmp, path)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
