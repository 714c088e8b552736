"""Clips for parity: a folder of audio files, with ``manifest.json`` references where present."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import GraniteOnnxError
from ..userfiles import is_dir, is_file, json_kind, one_line, read_json_object

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
# The fix for a manifest.json that does not say what load_clips needs (clips/manifest.json is the example).
MANIFEST_FIX = 'fix it (an object with "clips": [{"file": "a.flac", "transcript": "..."}]) or remove it'


@dataclass(frozen=True)
class Clip:
    path: Path
    reference: str | None  # the human transcript, when the manifest has one
    clip_set: str = ""  # the name of the --clips folder it came from

    @property
    def name(self) -> str:
        return self.path.name


def _manifest_error(manifest: Path, what: str) -> GraniteOnnxError:
    return GraniteOnnxError(f"{manifest}: {what}: {MANIFEST_FIX}")


def _inside(name: object) -> bool:
    """A relative path that stays in the clips folder: no absolute path, drive or ``..`` on any OS."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    return not any(
        p.is_absolute() or p.drive or ".." in p.parts for p in (PurePosixPath(name), PureWindowsPath(name))
    )


def _check_sample_rate(manifest: Path, value: object) -> None:
    """``sample_rate`` is informational (load_audio resamples every clip), but a value that is not a rate,
    null included, means the file was not written as a clips manifest."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        shown = json_kind(value) if isinstance(value, dict | list) else repr(value)[:40]
        raise _manifest_error(manifest, f"sample_rate must be a positive number of Hz, got {shown}")


def _manifest_clips(folder: Path, manifest: Path) -> list[Clip]:
    """The manifest's clips in order; every way it can be malformed is one line naming it."""
    data = read_json_object(manifest, GraniteOnnxError, MANIFEST_FIX)
    if "sample_rate" in data:
        _check_sample_rate(manifest, data["sample_rate"])
    entries = data.get("clips", [])
    if not isinstance(entries, list):
        raise _manifest_error(manifest, f'"clips" must be an array, got a JSON {json_kind(entries)}')
    clips = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "file" not in entry:
            raise _manifest_error(manifest, f'clips[{i}] must be an object with a "file"')
        name, transcript = entry["file"], entry.get("transcript")
        if not _inside(name):
            raise _manifest_error(
                manifest, f"clips[{i}].file {str(name)[:60]!r} must be a file name inside {folder}"
            )
        if transcript is not None and not isinstance(transcript, str):
            raise _manifest_error(
                manifest, f"clips[{i}].transcript must be a string, got a JSON {json_kind(transcript)}"
            )
        clips.append(Clip(folder / name, transcript))
    if not clips:
        raise _manifest_error(manifest, "it lists no clips")
    return clips


def load_clips(folder: Path) -> list[Clip]:
    """Clips in manifest order when ``manifest.json`` exists (the first is the reference), else by name."""
    folder = Path(folder)
    if not is_dir(folder):
        raise GraniteOnnxError(
            f"clips folder {folder} does not exist: pass --clips a folder of wav/flac files"
        )
    manifest = folder / "manifest.json"
    if is_file(manifest):
        clips = _manifest_clips(folder, manifest)
        missing = [c.name for c in clips if not is_file(c.path)]
        if missing:
            raise GraniteOnnxError(f"{manifest} lists {one_line(', '.join(missing))}, missing from {folder}")
    else:
        clips = [Clip(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not clips:
        raise GraniteOnnxError(f"no audio files (wav/flac/ogg) in {folder}")
    return [dataclasses.replace(c, clip_set=folder.name) for c in clips]


def load_clip_sets(folders: Sequence[Path]) -> list[Clip]:
    """The clips of every folder, folder by folder; a clip name must not occur in two folders (the
    report keys clips by name)."""
    names = [Path(f).name for f in folders]
    if len(set(names)) != len(names):
        raise GraniteOnnxError(
            f"two --clips folders share a name ({', '.join(names)}): a report names each set by its folder"
        )
    clips = [c for folder in folders for c in load_clips(folder)]
    seen: dict[str, Clip] = {}
    for c in clips:
        if c.name in seen:
            raise GraniteOnnxError(
                f"{c.name} is in both {seen[c.name].path.parent} and {c.path.parent}: rename one of them"
            )
        seen[c.name] = c
    return clips
