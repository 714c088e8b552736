"""The metadata stage: bundle folder -> ``granite_export_metadata.json`` and the model card ``README.md``.

It only reads what earlier stages wrote and describes the files as they are, so it can run again
at any time (after parity, after each quantise tier) and always reflects the current bundle. The
document is validated before anything is written: a bundle never gets metadata its own schema rejects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import BundleError
from ..staging import make_temp_dir, merge_into
from .card import render_card
from .collect import collect_metadata
from .schema import METADATA_FILE, validate_metadata

CARD_FILE = "README.md"


def metadata_json(doc: dict) -> str:
    """Deterministic text: key order as collected (stable), indent 2, ASCII only, trailing newline.

    NaN and infinity are refused: JSON has no such numbers and other programs' parsers reject them.
    """
    try:
        return json.dumps(doc, indent=2, ensure_ascii=True, allow_nan=False) + "\n"
    except ValueError as exc:
        raise BundleError(
            f"{METADATA_FILE}: a measured value is NaN or infinite (from a stage report): "
            "run that stage again"
        ) from exc


def write_metadata(bundle: Path) -> Path:
    """Collect, validate, then write the metadata and the card into ``bundle``; returns the metadata path.

    Raises BundleError (one line) when a required stage output is missing or the document does not
    follow the schema; in that case neither file is written.
    """
    bundle = Path(bundle)
    doc = collect_metadata(bundle)
    validate_metadata(doc)
    text, card = metadata_json(doc), render_card(doc)
    # Both files in one step: an interruption never leaves a card that describes other metadata.
    staged = make_temp_dir(bundle, "metadata")
    try:
        (staged / METADATA_FILE).write_text(text, encoding="utf-8")
        (staged / CARD_FILE).write_text(card, encoding="utf-8")
        for name in (METADATA_FILE, CARD_FILE):
            (staged / name).chmod(0o644)
        merge_into(bundle, staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return bundle / METADATA_FILE
