"""A committed expectation for the tiny model: what ``make regenerate`` must reproduce exactly.

It holds the sha256 of every artefact (graphs, sidecars, processor files) and the parity results
that are not floating-point noise (transcripts, byte-exact flags, gate verdicts), plus the toolchain
that produced them, so a failure can say whether the toolchain moved or the code did.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import BUNDLE_CHECKPOINT_FILES
from ..errors import BundleError
from ..parity.report import REPORT_FILE
from ..userfiles import is_dir, one_line, read_json_object
from .checksums import sha256_file

ARTEFACT_SUFFIXES = (".onnx", ".onnx_data")
ARTEFACT_FILES = BUNDLE_CHECKPOINT_FILES


def snapshot(bundle: Path) -> dict:
    """The reproducible facts of a bundle that has been through export and parity.

    Raises BundleError (one line naming the file) when the folder or one of its reports is missing,
    unreadable, or of a shape this granite-onnx does not write.
    """
    bundle = Path(bundle)
    if not is_dir(bundle):
        raise BundleError(
            f"bundle folder {bundle} does not exist or is not a folder: pass --bundle the folder written by "
            "`granite-onnx export`"
        )
    names = sorted(
        p.name for p in bundle.iterdir() if p.suffix in ARTEFACT_SUFFIXES or p.name in ARTEFACT_FILES
    )
    parity_path, export_path = bundle / REPORT_FILE, bundle / "export_report.json"
    if not parity_path.is_file():
        raise BundleError(f"{parity_path} is missing: run `granite-onnx parity` before comparing")
    if not export_path.is_file():
        raise BundleError(f"{export_path} is missing: run `granite-onnx export --out-dir {bundle}` again")
    parity = read_json_object(parity_path, BundleError, "run `granite-onnx parity` again")
    export = read_json_object(export_path, BundleError, f"run `granite-onnx export --out-dir {bundle}` again")
    toolchain = export.get("toolchain")
    if not isinstance(toolchain, dict):
        raise BundleError(
            f"{export_path} has no toolchain object: run `granite-onnx export --out-dir {bundle}` again"
        )
    try:
        results = _parity_results(parity)
    except (KeyError, TypeError, AttributeError) as exc:  # a report of another shape (older, or edited)
        raise BundleError(
            f"{parity_path} is not a parity report of this granite-onnx ({type(exc).__name__}: "
            f"{one_line(exc, 80)}): run `granite-onnx parity` again"
        ) from exc
    return {
        "toolchain": toolchain,
        "sha256": {name: sha256_file(bundle / name) for name in names},
        "parity": results,
    }


def _parity_results(parity: dict) -> dict:
    """Gate verdicts and, per clip, the PyTorch transcript and each tier's text and byte-exact flag."""
    return {
        "gates": {g["name"]: g["passed"] for g in parity["gates"]},
        "clips": {
            c["clip"]: {
                "pytorch": c["pytorch_text"],
                **{t["tier"]: [t["text"], t["byte_exact"]] for t in c["tiers"]},
            }
            for c in parity["multi_clip_parity"]
        },
    }


def toolchain_changes(actual: dict, expected: dict) -> list[str]:
    """Tools whose version moved: not a failure by itself, but the first thing to read when one follows."""
    tools = sorted(set(actual["toolchain"]) | set(expected["toolchain"]))
    return [
        f"toolchain {t}: expected {expected['toolchain'].get(t)}, got {actual['toolchain'].get(t)}"
        for t in tools
        if actual["toolchain"].get(t) != expected["toolchain"].get(t)
    ]


def differences(actual: dict, expected: dict) -> list[str]:
    """Artefact digests and parity results that differ (each one fails ``make regenerate``)."""
    out = []
    files = sorted(set(actual["sha256"]) | set(expected["sha256"]))
    out += [
        f"{f}: sha256 expected {str(expected['sha256'].get(f))[:12]}, got {str(actual['sha256'].get(f))[:12]}"
        for f in files
        if actual["sha256"].get(f) != expected["sha256"].get(f)
    ]
    for key in ("gates", "clips"):
        a, e = actual["parity"][key], expected["parity"][key]
        out += [
            f"parity {key} {k}: expected {e.get(k)!r}, got {a.get(k)!r}"
            for k in sorted(set(a) | set(e))
            if a.get(k) != e.get(k)
        ]
    return out
