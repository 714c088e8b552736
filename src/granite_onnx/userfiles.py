"""Read the small files a user hands us (configs, manifests, stage reports) without a traceback.

Every reader of such a file fails the same ways: it cannot be read, it is not UTF-8, it is not JSON,
it nests too deeply for the parser, or it holds an array where an object belongs. This module turns
each into one line of the caller's :class:`GraniteOnnxError` subclass that names the file and the fix,
so the readers themselves only check the fields they use. Names read from such files are checked
with :func:`is_file`, which answers False for a name the OS cannot even look up. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import GraniteOnnxError

__all__ = ["exists", "is_dir", "is_file", "json_kind", "one_line", "read_json", "read_json_object"]

_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def one_line(text: object, limit: int = 200) -> str:
    """Collapse a library message to one short line: the CLI prints errors as a single line."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def json_kind(value: object) -> str:
    """JSON's name for a parsed value's type ("array", "number", ...), for messages about wrong types."""
    return _KINDS.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


def _lookup(path: Path, test) -> bool:
    try:
        return test(Path(path))
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    """``Path.is_file`` for a name a user gave (argv, a manifest): a name too long for the OS, or one
    it otherwise cannot look up, is simply not a file there, where ``Path.is_file`` raises OSError."""
    return _lookup(path, Path.is_file)


def is_dir(path: Path) -> bool:
    """``Path.is_dir``, False where the OS cannot look the name up (see :func:`is_file`)."""
    return _lookup(path, Path.is_dir)


def exists(path: Path) -> bool:
    """``Path.exists``, False where the OS cannot look the name up (see :func:`is_file`)."""
    return _lookup(path, Path.exists)


def read_json(path: Path, error: type[GraniteOnnxError], fix: str) -> Any:
    """Parse ``path``; any failure is one line of ``error`` naming the file, ending in ``fix``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise error(
            f"cannot read {path} ({one_line(exc.strerror or type(exc).__name__)}): check the file and its "
            "permissions"
        ) from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not valid JSON (not UTF-8 text): {fix}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): {fix}") from exc
    except RecursionError as exc:
        raise error(f"{path} is not valid JSON (nested too deeply to parse): {fix}") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's int-conversion limit
        raise error(f"{path} is not valid JSON ({one_line(exc, 120)}): {fix}") from exc


def read_json_object(path: Path, error: type[GraniteOnnxError], fix: str) -> dict[str, Any]:
    """:func:`read_json` for files whose top level must be an object (every config and report)."""
    data = read_json(path, error, fix)
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {json_kind(data)}, not an object: {fix}")
    return data


def shown_path(path: Path) -> str:
    """A folder as a report may show it: as given when relative (``synthetic/heldout``, which the card's
    reproduce commands reuse), only its name when absolute (no home folders in published reports)."""
    path = Path(path)
    return path.name if path.is_absolute() else path.as_posix()
