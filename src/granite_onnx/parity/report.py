"""The parity stage's result: plain frozen dataclasses, written as ``parity_report.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .metrics import ErrorStats

REPORT_FILE = "parity_report.json"
SCHEMA_VERSION = 1
FP32 = "fp32"


@dataclass(frozen=True)
class TeacherForcing:
    """decode_step fed the PyTorch tokens: where its argmax disagrees, and how close that step was."""

    steps: int
    mismatches: int
    mismatch_steps: tuple[int, ...]
    mismatch_margins: tuple[float, ...]  # PyTorch top-1 minus top-2 logit at each mismatching step


@dataclass(frozen=True)
class SingleClipBlock:
    tier: str
    clip: str
    encoder: ErrorStats | None  # None (like every number here) when the tier could not run: see error
    prompt_logits_max_abs: float | None
    prompt_argmax_agrees: bool
    kv_max_abs: float | None
    decode: TeacherForcing | None
    transcript_match: bool
    error: str | None = None


@dataclass(frozen=True)
class TierTranscript:
    tier: str
    text: str
    byte_exact: bool
    wer_vs_pytorch: float
    wer_vs_reference: float | None
    levenshtein_vs_fp32: int
    first_divergent_step: int | None
    tokens: int
    error: str | None = None
    margin_at_divergence: float | None = None  # PyTorch's top-1 minus top-2 logit at the first divergent step


@dataclass(frozen=True)
class ClipParity:
    clip: str
    duration_s: float
    reference_text: str | None
    pytorch_text: str
    pytorch_wer_vs_reference: float | None
    tiers: tuple[TierTranscript, ...]
    pytorch_margins: tuple[float, ...] = ()  # PyTorch's top-1 minus top-2 logit at every greedy step
    clip_set: str = ""  # the --clips folder the clip came from (see parity.sets)


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ParityReport:
    model: dict
    tiers: tuple[str, ...]
    normalisation: str
    max_new_tokens: int
    wer_limit: float
    single_clip: tuple[SingleClipBlock, ...]
    multi_clip_parity: tuple[ClipParity, ...]
    gates: tuple[Gate, ...]
    quantised_gate: str = "wer"  # how quantised tiers were gated: "wer" or "near-tie" (see harness)
    sets: dict = field(default_factory=dict)  # clip set -> pooled measures (see parity.sets)
    gate_set: str | None = None  # the clip set the gates were computed on (None: every clip)
    ungated: tuple[str, ...] = ()  # tiers reported without a gate
    # The CPU every figure above was measured on, and the integer kernel it ran (see runtime.cpu): a
    # quantised figure holds for those kernels. Per tier, whether its stored weights can make another
    # CPU's kernel saturate (runtime.saturation): where they cannot, the figure holds on every CPU.
    cpu: dict = field(default_factory=dict)
    kernel_saturation: dict = field(default_factory=dict)
    # How the runtime ran decode_step for these figures (runtime.pipeline.decode_form): its cache and batch.
    decode: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def write(self, folder: Path) -> Path:
        from ..staging import write_text_atomic

        return write_text_atomic(Path(folder) / REPORT_FILE, json.dumps(self.to_json(), indent=2) + "\n")
