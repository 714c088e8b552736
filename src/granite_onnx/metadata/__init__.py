"""metadata stage: ``granite_export_metadata.json`` (validated against ``schema.json``) and the model card."""

from .card import render_card
from .collect import SCHEMA_VERSION, collect_metadata
from .schema import METADATA_FILE, load_schema, validate_metadata
from .stage import CARD_FILE, write_metadata

__all__ = [
    "CARD_FILE",
    "METADATA_FILE",
    "SCHEMA_VERSION",
    "collect_metadata",
    "load_schema",
    "render_card",
    "validate_metadata",
    "write_metadata",
]
