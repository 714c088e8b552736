"""Hugging Face audio datasets as parity clip sources (``parity --dataset``).

A dataset is read with its audio column cast to ``Audio(decode=False)``: each row then carries the encoded
file's bytes (or a path to it), which soundfile decodes. No torchcodec or FFmpeg is needed. Each row that
decodes is written, as the bytes it came with, into a clip folder with a ``manifest.json`` holding the
dataset's transcript, so parity runs on it exactly as on ``--clips``. A row that fails to decode is
named and counted in :class:`DatasetClips` and never stops the run.

Sources: a Hub id (where a network exists), a folder written by ``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk``, or an ``audiofolder`` (audio files plus a ``metadata.csv`` or
``metadata.jsonl`` whose ``file_name`` column names them). datasets' own audiofolder builder encodes every
file through torchcodec (datasets 5 imports it for any audio encoding), so the metadata is read with its
csv / json builder and each file named there is read from the folder.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GraniteOnnxError
from ..userfiles import one_line

TEXT_COLUMNS = ("text", "transcript", "transcription", "sentence", "normalized_text")
AUDIO_COLUMNS = ("audio",)
INSTALL = "pip install 'granite-onnx[datasets]'"


@dataclass(frozen=True)
class DatasetSpec:
    """What ``parity --dataset`` was given."""

    source: str
    split: str | None = None
    config: str | None = None
    limit: int | None = None
    text_column: str | None = None
    audio_column: str | None = None


@dataclass
class DatasetClips:
    """The clip folder written from a dataset, and the rows that could not be used."""

    folder: Path
    spec: DatasetSpec
    split: str
    written: int = 0
    failed: list[dict] = field(default_factory=list)  # {"row", "name", "reason"}

    def to_json(self) -> dict:
        return {
            "source": self.spec.source,
            "config": self.spec.config,
            "split": self.split,
            "limit": self.spec.limit,
            "clips": self.written,
            "failed": self.failed,
        }


def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise GraniteOnnxError(f"parity --dataset needs the datasets package: {INSTALL}") from exc
    return datasets


def _is_saved(folder: Path) -> bool:
    """A folder written by ``save_to_disk`` (one split, or a dict of splits)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


METADATA = {"metadata.csv": "csv", "metadata.jsonl": "json"}
FILE_COLUMN = "file_name"  # an audiofolder's column of audio file names


def _audiofolder(folder: Path, datasets):
    """An audiofolder's metadata as a dataset (its ``file_name`` column names the audio files)."""
    found = [(folder / name, kind) for name, kind in METADATA.items() if (folder / name).is_file()]
    if not found:
        raise GraniteOnnxError(
            f"--dataset {folder} is neither a save_to_disk folder nor an audiofolder: an audiofolder needs a "
            f"metadata.csv or metadata.jsonl with a {FILE_COLUMN} column and a transcript column"
        )
    file, kind = found[0]
    return datasets.load_dataset(kind, data_files=str(file), split="train")


def open_dataset(spec: DatasetSpec):
    """The split asked for, as a ``datasets.Dataset``, and its name; every failure is one line."""
    datasets = _datasets()
    path = Path(spec.source)
    try:
        if path.is_dir() and _is_saved(path):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_dir():
            loaded = _audiofolder(path, datasets)
        elif path.exists():
            raise GraniteOnnxError(f"--dataset {path} is a file: give a dataset folder or a Hub id")
        else:
            loaded = datasets.load_dataset(spec.source, spec.config)
    except GraniteOnnxError:
        raise
    except Exception as exc:  # datasets raises many types (missing repo, bad folder, no network)
        raise GraniteOnnxError(f"cannot read dataset {spec.source!r}: {one_line(exc, 200)}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        split = spec.split or ("test" if "test" in splits else splits[0])
        if split not in loaded:
            raise GraniteOnnxError(
                f"dataset {spec.source!r} has no split {split!r}; it has {', '.join(splits)}"
            )
        return loaded[split], split
    return loaded, spec.split or "train"


def _column(names: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise GraniteOnnxError(
                f"dataset {source!r} has no {what} column {wanted!r}; it has {', '.join(names)}"
            )
        return wanted
    found = next((c for c in candidates if c in names), None)
    if found is None:
        flag = "--text-column" if what == "text" else "--audio-column"
        raise GraniteOnnxError(
            f"dataset {source!r} has none of the {what} columns {', '.join(candidates)}: name it with {flag} "
            f"(its columns: {', '.join(names)})"
        )
    return found


def _safe_name(index: int, path: str | None, suffix: str) -> str:
    stem = Path(path).stem if path else f"row-{index}"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or f"row-{index}"
    return f"{index:06d}-{stem}{suffix}"


def _audio_bytes(cell: dict, base: Path | None) -> tuple[bytes, str | None]:
    """The encoded audio of one ``Audio(decode=False)`` cell: its bytes, or the file its path names."""
    data, path = cell.get("bytes"), cell.get("path")
    if data is None and path:
        file = Path(path) if Path(path).is_absolute() or base is None else base / path
        if base is not None and not Path(path).is_absolute() and ".." in Path(path).parts:
            raise ValueError(f"{path} is outside the dataset folder")
        data = file.read_bytes()
    if data is None:
        raise ValueError("the row has neither audio bytes nor a readable path")
    return data, path


def set_folder_name(spec: DatasetSpec) -> str:
    """The clip set's name in the report: the dataset's last path or id part, and its split when given."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(spec.source.rstrip("/")).name or spec.source)
    return base + (f"-{spec.split}" if spec.split else "")


def dataset_facts(folder: Path) -> dict | None:
    """What :func:`write_clips` recorded in a clip folder's manifest (None for a plain clip folder)."""
    manifest = Path(folder) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None


def write_clips(spec: DatasetSpec, out: Path) -> DatasetClips:
    """Write the dataset's usable rows into ``out`` (a clip folder with ``manifest.json``).

    ``out`` is created; rows that fail to decode are recorded, not raised.
    """
    import soundfile as sf

    datasets = _datasets()
    dataset, split = open_dataset(spec)
    names = list(dataset.column_names)
    text = _column(names, spec.text_column, TEXT_COLUMNS, "text", spec.source)
    files = spec.audio_column is None and FILE_COLUMN in names and "audio" not in names  # an audiofolder
    audio = FILE_COLUMN if files else _column(names, spec.audio_column, AUDIO_COLUMNS, "audio", spec.source)
    if not files:
        dataset = dataset.cast_column(audio, datasets.Audio(decode=False))
    if spec.limit is not None:
        dataset = dataset.select(range(min(spec.limit, len(dataset))))
    base = Path(spec.source) if Path(spec.source).is_dir() else None
    out.mkdir(parents=True, exist_ok=True)
    result = DatasetClips(out, spec, split)
    entries = []
    for index, row in enumerate(dataset):
        cell = {"bytes": None, "path": row[audio]} if files else (row[audio] or {})
        reference = row[text]
        name = _safe_name(index, cell.get("path"), ".flac")
        try:
            data, path = _audio_bytes(cell, base)
            info = sf.info(io.BytesIO(data))  # decodes the header; read() below decodes the samples
            sf.read(io.BytesIO(data), frames=min(info.frames, 16000))
            suffix = Path(path).suffix.lower() if path and Path(path).suffix else f".{info.format.lower()}"
            name = _safe_name(index, path, suffix)
            (out / name).write_bytes(data)
        except Exception as exc:  # a broken file is reported and counted, never fatal
            result.failed.append({"row": index, "name": name, "reason": one_line(exc, 160)})
            continue
        entries.append({"file": name, "transcript": reference if isinstance(reference, str) else None})
    if not entries:
        raise GraniteOnnxError(
            f"dataset {spec.source!r} ({split}): none of its {len(dataset)} rows decoded"
            + (f"; first failure: {result.failed[0]['reason']}" if result.failed else "")
        )
    result.written = len(entries)
    manifest = {"dataset": result.to_json(), "clips": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return result
