"""The JSON Schema of ``granite_export_metadata.json`` and a validator with one-line errors.

The schema ships as package data (``schema.json`` beside this module) so the same file checks the
metadata when it is written, in the tests, and in any other program that reads a bundle.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from ..errors import BundleError

SCHEMA_FILE = "schema.json"
METADATA_FILE = "granite_export_metadata.json"


@cache
def _schema_text() -> str:
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema() -> dict:
    """A fresh copy of the schema (callers may modify it without affecting later validations)."""
    return json.loads(_schema_text())


def _validator():
    """A draft 2020-12 validator; imported late so reading a bundle never needs jsonschema."""
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def error_path(error) -> str:
    """Dotted location of a schema error, naming the missing key itself for ``required`` errors."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        parts.append(missing[0] if missing else "?")
    return ".".join(parts) or "(top level)"


def validate_metadata(doc: dict) -> None:
    """Raise BundleError naming the first failing path when ``doc`` does not follow the schema."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(doc))
    if error is None:
        return
    what = "is missing" if error.validator == "required" else " ".join(error.message.split())[:200]
    raise BundleError(f"{METADATA_FILE} does not follow its schema: {error_path(error)} {what}")
