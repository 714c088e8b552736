"""``granite-onnx verify``: the portability audit of a bundle folder (local or downloaded).

Every graph file is audited (IR, opset, domains, one sidecar, nothing large inline, onnx.checker
full check, loads in onnxruntime with basic and all optimisations); prompt_encode's presents must
match decode_step's pasts; an assembled bundle's SHA256SUMS must hold. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .audit import audit_file, check_kv_agreement, check_loads
from .errors import BundleError, GraniteOnnxError
from .publish.checksums import MANIFEST, verify_manifest
from .runtime import cpu
from .runtime.saturation import saturation_warning, tier_verdict
from .specs import CTC, DECODE_STEP, PROMPT_ENCODE
from .userfiles import is_dir, one_line


@dataclass(frozen=True)
class Check:
    item: str
    check: str
    ok: bool
    detail: str = ""
    skipped: bool = False


def _graph_checks(path: Path, load: bool) -> list[Check]:
    result = audit_file(path)
    checks = [Check(path.name, "contract", result.ok, "; ".join(result.problems))]
    if load:
        problems = check_loads(path)
        checks.append(Check(path.name, "onnxruntime load", not problems, "; ".join(problems)))
    return checks


def _tiers(folder: Path) -> list[str]:
    """'' for FP32 plus each suffix that has both LLM graphs (e.g. '_int8'), or a CTC graph."""
    suffixes = [""]
    for path in sorted(folder.glob(f"{PROMPT_ENCODE}_*.onnx")):
        suffix = path.stem[len(PROMPT_ENCODE) :]
        if (folder / f"{DECODE_STEP}{suffix}.onnx").is_file():
            suffixes.append(suffix)
    suffixes += [path.stem[len(CTC) :] for path in sorted(folder.glob(f"{CTC}_*.onnx"))]
    return suffixes


def verify_bundle(folder: Path, load: bool = True, require_manifest: bool = False) -> list[Check]:
    folder = Path(folder)
    graphs = sorted(folder.glob("*.onnx")) if is_dir(folder) else []
    if not graphs:
        raise BundleError(
            f"{folder} holds no .onnx graphs: pass --bundle the folder written by `granite-onnx export`"
        )
    checks = [c for path in graphs for c in _graph_checks(path, load)]
    for suffix in _tiers(folder):
        prompt, decode = folder / f"{PROMPT_ENCODE}{suffix}.onnx", folder / f"{DECODE_STEP}{suffix}.onnx"
        if prompt.is_file() and decode.is_file():
            problems = check_kv_agreement(prompt, decode)
            checks.append(
                Check(f"{prompt.name} -> {decode.name}", "KV names/shapes", not problems, "; ".join(problems))
            )
    checks += kernel_checks(folder)
    if (folder / MANIFEST).is_file() or require_manifest:
        problems = verify_manifest(folder)
        checks.append(Check(MANIFEST, "checksums", not problems, "; ".join(problems)))
    else:
        checks.append(
            Check(MANIFEST, "checksums", True, "no SHA256SUMS: not an assembled bundle", skipped=True)
        )
    return checks


def kernel_checks(folder: Path) -> list[Check]:
    """Per quantised tier: can its integer products saturate on some CPU (runtime.saturation)? That is
    information, not a failure: the warning for the CPU at hand is :func:`kernel_warnings`."""
    checks = []
    for suffix in _tiers(folder)[1:]:
        verdict = tier_verdict(folder, suffix[1:])
        if not verdict["integer_sites"]:
            continue
        unsafe, sites = verdict["sites_that_can_saturate"], verdict["integer_sites"]
        detail = (
            f"{unsafe} of {sites} integer products can saturate on x86 CPUs without VNNI"
            if verdict["can_saturate"]
            else f"none of {sites} integer products can saturate on any CPU"
        )
        checks.append(Check(f"tier {suffix[1:]}", "integer kernels", True, detail))
    return checks


def kernel_warnings(folder: Path) -> list[str]:
    """One line per tier that can compute wrong integer products on *this* CPU (none elsewhere)."""
    saturating = cpu.current_cpu().saturating_u8s8  # looked up at call time (tests replace it)
    found = (saturation_warning(folder, suffix[1:], saturating) for suffix in _tiers(folder)[1:])
    return [w for w in found if w]


def download_bundle(repo_id: str, revision: str | None = None, cache_dir: Path | None = None) -> Path:
    """Fetch a published bundle with huggingface_hub (needs a network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type="model", cache_dir=cache_dir))
    except Exception as exc:  # offline, not found, gated: all end here for the user
        raise GraniteOnnxError(
            f"cannot download {repo_id} from the Hub: {one_line(exc) or type(exc).__name__}"
        ) from exc


def format_checks(checks: list[Check]) -> list[str]:
    width = max(len(c.item) for c in checks)
    status = lambda c: "SKIP" if c.skipped else "PASS" if c.ok else "FAIL"  # noqa: E731
    return [f"{status(c)}  {c.item:{width}s}  {c.check:18s} {c.detail}".rstrip() for c in checks]
