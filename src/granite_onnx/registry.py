"""The Granite Speech family: one entry per architecture the toolchain exports, as in llama.cpp's converter.

A checkpoint's ``config.json`` (``model_type``, ``architectures``, and what marks remote code) picks its
entry, and the entry declares what the stages need to know about it: the transformers class the PyTorch
reference is built from, the class-name prefix the export patches bind to (4.1-2b-plus renames every
encoder class), whether the head is tied, the graphs and the decode loop, and the ``--model`` name of its
tiny test checkpoint. A new architecture is a new entry, not a branch in a stage.

Architectures the family has but this toolchain does not export are listed too, each with the one line a
user gets instead (3.2's remote code, the NAR model transformers 5.23 lacks, and the ones still to come).
Torch-free: validation reads it before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .specs import GRAPH_NAMES

AUTOREGRESSIVE = "autoregressive"


@dataclass(frozen=True)
class Entry:
    """One exportable architecture."""

    name: str
    model_type: str
    model_class: str  # transformers' class of the PyTorch reference
    class_prefix: str  # its encoder classes are <prefix>ConformerAttention, <prefix>EncoderProjector, ...
    checkpoints: tuple[str, ...]  # published checkpoints of this architecture
    fixture: str  # the --model name of its tiny random checkpoint (fixtures.py builds it)
    tied_head: bool  # lm_head shares the embedding matrix (no lm_head tensor in the checkpoint)
    graphs: tuple[str, ...] = GRAPH_NAMES
    decode: str = AUTOREGRESSIVE
    notes: str = ""


@dataclass(frozen=True)
class Unsupported:
    """An architecture of the family that is refused, and why (one line)."""

    name: str
    model_types: tuple[str, ...]
    reason: str


GRANITE_SPEECH = Entry(
    name="granite-speech",
    model_type="granite_speech",
    model_class="GraniteSpeechForConditionalGeneration",
    class_prefix="GraniteSpeech",
    checkpoints=("ibm-granite/granite-4.0-1b-speech", "ibm-granite/granite-speech-4.1-2b"),
    fixture="tiny",
    tied_head=False,
    notes="4.0 and 4.1 share the architecture; only the default instruction differs",
)
GRANITE_SPEECH_PLUS = Entry(
    name="granite-speech-plus",
    model_type="granite_speech_plus",
    model_class="GraniteSpeechPlusForConditionalGeneration",
    class_prefix="GraniteSpeechPlus",
    checkpoints=("ibm-granite/granite-speech-4.1-2b-plus",),
    fixture="tiny-plus",
    tied_head=True,
    notes="the encoder concatenates cat_hidden_layers before the projector; the graph IO is unchanged",
)
ENTRIES = (GRANITE_SPEECH, GRANITE_SPEECH_PLUS)

UNSUPPORTED = (
    Unsupported(
        "granite-speech-3.2",
        (),  # granite_speech with remote code: recognised by its auto_map / projector type (remote_code)
        "granite-speech-3.2 needs its own remote code (trust_remote_code: a granite_speech_qformer "
        "projector transformers does not have); export granite-speech-3.3 or 4.x instead",
    ),
    Unsupported(
        "granite-speech-4.1-2b-nar",
        ("granite_speech_nar",),
        "granite-speech-4.1-2b-nar (non-autoregressive) is not in transformers 5.23, only in the Hub's "
        "remote code, so there is no PyTorch reference to prove an export against",
    ),
    Unsupported(
        "granite-speech-5.0 CTC",
        ("granite_speech5_ctc",),
        "granite-speech-5.0 CTC checkpoints (GraniteSpeech5ForCTC) need a CTC graph contract that "
        "granite-onnx does not export yet",
    ),
)


def supported_text() -> str:
    return ", ".join(
        f"{e.model_type} ({', '.join(c.rsplit('/', 1)[-1] for c in e.checkpoints)})" for e in ENTRIES
    )


def remote_code(config: dict) -> bool:
    """3.2's layout: remote classes in ``auto_map``, or its own Q-Former projector type."""
    projector = config.get("projector_config")
    projector_type = projector.get("model_type") if isinstance(projector, dict) else None
    return bool(config.get("auto_map")) or projector_type == "granite_speech_qformer"


def entry_for_config(config: object, config_path: Path) -> Entry:
    """The entry of a parsed ``config.json``; every refusal is one CheckpointError line naming the file."""
    model_type = config.get("model_type") if isinstance(config, dict) else None
    for refused in UNSUPPORTED:
        if model_type in refused.model_types:
            raise CheckpointError(f"{config_path}: {refused.reason}")
    for entry in ENTRIES:
        if model_type == entry.model_type:
            if remote_code(config):
                raise CheckpointError(f"{config_path}: {UNSUPPORTED[0].reason}")
            return entry
    raise CheckpointError(
        f"{config_path} has model_type {model_type!r}, which granite-onnx does not export; supported: "
        f"{supported_text()}"
    )


def entry_named(name: str) -> Entry:
    """The entry called ``name`` (its ``name`` or ``model_type``)."""
    for entry in ENTRIES:
        if name in (entry.name, entry.model_type):
            return entry
    raise KeyError(name)


def entry_of_fixture(model: str) -> Entry | None:
    """The entry whose tiny random checkpoint is ``--model model`` (tiny, tiny-plus), else None."""
    return next((e for e in ENTRIES if e.fixture == model), None)
