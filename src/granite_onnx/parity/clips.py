"""Clips for parity: a folder of audio files, with ``manifest.json`` references where present."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GraniteOnnxError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")


@dataclass(frozen=True)
class Clip:
    path: Path
    reference: str | None  # the human transcript, when the manifest has one

    @property
    def name(self) -> str:
        return self.path.name


def load_clips(folder: Path) -> list[Clip]:
    """Clips in manifest order when ``manifest.json`` exists (the first is the reference), else by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GraniteOnnxError(
            f"clips folder {folder} does not exist: pass --clips a folder of wav/flac files"
        )
    manifest = folder / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text()).get("clips", [])
        clips = [Clip(folder / e["file"], e.get("transcript")) for e in entries]
        missing = [c.name for c in clips if not c.path.is_file()]
        if missing:
            raise GraniteOnnxError(f"{manifest} lists {', '.join(missing)}, missing from {folder}")
    else:
        clips = [Clip(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not clips:
        raise GraniteOnnxError(f"no audio files (wav/flac/ogg) in {folder}")
    return clips
