"""A committed expectation for the tiny model: what ``make regenerate`` must reproduce exactly.

It holds the sha256 of every artefact (graphs, sidecars, processor files) and the parity results
that are not floating-point noise (transcripts, byte-exact flags, gate verdicts; a quantised transcript
that leaves PyTorch's at a near-tie is held as such, not as text), plus the toolchain that produced
them, so a failure can say whether the toolchain moved or the code did. Every file is the same bytes on
every x86-64 CPU: int8s's calibrated ranges are rounded so that FP32 kernel noise cannot reach them.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import BUNDLE_CHECKPOINT_FILES
from ..errors import BundleError
from ..parity.metrics import near_tie_limit
from ..parity.report import FP32, REPORT_FILE
from ..runtime.prompt import PROMPTS_FILE
from ..userfiles import is_dir, one_line, read_json_object
from .checksums import sha256_file

ARTEFACT_SUFFIXES = (".onnx", ".onnx_data")
ARTEFACT_FILES = (*BUNDLE_CHECKPOINT_FILES, PROMPTS_FILE)


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


NEAR_TIE = "diverges at a near-tie"
# A tier parity measured without a gate (--ungated): its transcript is reported, not held. On tiny-plus the
# INT8 tiers leave PyTorch at confident steps, and the text after that depends on the CPU (measured under
# qemu Haswell: all three INT8 tiers' texts changed on 4 of 5 clips, every sha256 and gate the same).
UNGATED = "ungated: reported, not held"


def _tier_result(tier: dict, limit: float) -> list | str:
    """A tier's transcript as the expectation holds it: ``[text, byte_exact]``, or :data:`NEAR_TIE` for a
    quantised tier that leaves PyTorch's transcript at one of PyTorch's near-ties.

    Such a transcript depends on the CPU: the integer products of the int8 tiers are exact everywhere,
    but the FP32 work around them rounds differently on AVX2 and AVX-512 kernels, and a step whose top two
    logits are that close can flip (measured under qemu Haswell: one of 48 held-out clips of the trained
    fixture). Where it diverges at a confident step, the text is held exactly."""
    margin = tier.get("margin_at_divergence")
    if tier["tier"] != FP32 and not tier["byte_exact"] and margin is not None and margin < limit:
        return NEAR_TIE
    return [tier["text"], tier["byte_exact"]]


def _parity_results(parity: dict) -> dict:
    """Gate verdicts and, per clip, the PyTorch transcript and each tier's text and byte-exact flag (or
    the near-tie mark of :func:`_tier_result`, or :data:`UNGATED` for a tier parity did not gate)."""
    clips = parity["multi_clip_parity"]
    limit = near_tie_limit(m for c in clips for m in c.get("pytorch_margins", []))
    ungated = set(parity.get("ungated") or ())
    return {
        "gates": {g["name"]: g["passed"] for g in parity["gates"]},
        "clips": {
            c["clip"]: {
                "pytorch": c["pytorch_text"],
                **{
                    t["tier"]: UNGATED if t["tier"] in ungated else _tier_result(t, limit) for t in c["tiers"]
                },
            }
            for c in clips
        },
    }


def _same_tier_result(actual, expected) -> bool:
    """Equal; or one side left PyTorch at a near-tie and the other did too or stayed byte-exact (the
    outcomes CPU rounding can swap). Only quantised tiers are ever marked :data:`NEAR_TIE`."""
    if actual == expected:
        return True
    if NEAR_TIE not in (actual, expected):
        return False
    other = expected if actual == NEAR_TIE else actual
    return other == NEAR_TIE or (isinstance(other, list) and len(other) == 2 and other[1] is True)


def _same_clip(actual, expected) -> bool:
    if not isinstance(actual, dict) or not isinstance(expected, dict) or set(actual) != set(expected):
        return actual == expected
    return all(
        actual[k] == expected[k] if k == "pytorch" else _same_tier_result(actual[k], expected[k])
        for k in actual
    )


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
        same = _same_clip if key == "clips" else (lambda x, y: x == y)
        out += [
            f"parity {key} {k}: expected {e.get(k)!r}, got {a.get(k)!r}"
            for k in sorted(set(a) | set(e))
            if not same(a.get(k), e.get(k))
        ]
    return out
