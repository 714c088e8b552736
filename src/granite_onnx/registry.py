"""The Granite Speech family: one entry per architecture the toolchain exports, as in llama.cpp's converter.

A checkpoint's ``config.json`` (``model_type``, ``architectures``, and what marks remote code) picks its
entry, and the entry declares what the stages need to know about it: the transformers class the PyTorch
reference is built from, the class-name prefix the export patches bind to (4.1-2b-plus renames every
encoder class), whether the head is tied, the prompt style per checkpoint name, and the ``--model`` name
of its tiny test checkpoint, and its contract: "autoregressive" (frontend.onnx plus the three graphs of
specs.GRAPH_NAMES, a prompt, greedy decoding with a KV cache) or "ctc" (one graph, specs.CTC, no prompt,
greedy CTC decoding). A new architecture is a new entry, not a branch in a stage.

Architectures the family has but this toolchain does not export are listed too, each with the one line a
user gets instead (3.2's remote code, the NAR model transformers 5.23 lacks, and the ones still to come).
Torch-free: validation reads it before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .errors import CheckpointError
from .runtime.prompt import PromptStyle
from .specs import BUNDLE_GRAPHS, CTC, CTC_MODEL_TYPE, FRONTEND, GRAPH_NAMES

AUTOREGRESSIVE = "autoregressive"
CTC_CONTRACT = "ctc"
# Per contract: the model graphs (every tier has its own) and every graph of an FP32 bundle, in order.
CONTRACT_GRAPHS = {AUTOREGRESSIVE: GRAPH_NAMES, CTC_CONTRACT: (CTC,)}
CONTRACT_BUNDLE_GRAPHS = {AUTOREGRESSIVE: BUNDLE_GRAPHS, CTC_CONTRACT: (FRONTEND, CTC)}

# The model cards' prompts (IBM's granite_speech/prompts.py and the cards' examples).
INSTRUCTION_4_0 = "can you transcribe the speech into a written format?"
INSTRUCTION_4_1 = "transcribe the speech with proper punctuation and capitalization."
PLUS_SYSTEM = (
    "Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\n"
    "You are Granite, developed by IBM. You are a helpful AI assistant"
)
SPEAKERS = (
    "Speaker attribution: Transcribe and denote who is speaking by adding [Speaker 1]: and [Speaker 2]: "
    "tags before speaker turns."
)
TIMESTAMPS = (
    "Timestamps: Transcribe the speech. After each word, add a timestamp tag showing the end time in "
    "centiseconds, e.g. hello [T:45] world [T:82]"
)


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
    # (fragment of the checkpoint's name, its prompt style): the first fragment found in the Hub id or the
    # folder's name wins; the last, with fragment "", is the entry's default.
    styles: tuple[tuple[str, PromptStyle], ...] = ()
    notes: str = ""
    contract: str = AUTOREGRESSIVE  # which graphs, runtime and decode loop (see the module docstring)

    @property
    def graphs(self) -> tuple[str, ...]:
        """The model graphs of this entry's bundles (each quantised tier writes its own)."""
        return CONTRACT_GRAPHS[self.contract]

    @property
    def bundle_graphs(self) -> tuple[str, ...]:
        """Every graph of an FP32 bundle, in pipeline order (the autoregressive one adds frontend.onnx)."""
        return CONTRACT_BUNDLE_GRAPHS[self.contract]

    def prompt_style(self, name: str) -> PromptStyle | None:
        """The prompt style for a checkpoint called ``name`` (Hub id, fixture name or folder name), with
        ``source`` saying why; a name the entry does not know gets the default, and says so. None for an
        entry without a prompt (CTC)."""
        if not self.styles:
            return None
        lowered = name.lower()
        for fragment, style in self.styles:
            if fragment and fragment in lowered:
                return replace(style, source=f"{self.name}: the prompt of '{fragment}' checkpoints ({name})")
        default = self.styles[-1][1]
        return replace(default, source=f"{self.name}: default, no known checkpoint name in {name!r}")


@dataclass(frozen=True)
class Unsupported:
    """An architecture of the family that is refused, and why (one line)."""

    name: str
    model_types: tuple[str, ...]
    reason: str


# 4.1-2b-plus: a system turn, a space after the audio placeholder, and two more tasks; no punctuation.
PLUS_STYLE = PromptStyle(
    INSTRUCTION_4_0,
    system=PLUS_SYSTEM,
    separator=" ",
    tasks=(("speakers", SPEAKERS), ("timestamps", TIMESTAMPS)),
)

GRANITE_SPEECH = Entry(
    name="granite-speech",
    model_type="granite_speech",
    model_class="GraniteSpeechForConditionalGeneration",
    class_prefix="GraniteSpeech",
    checkpoints=("ibm-granite/granite-4.0-1b-speech", "ibm-granite/granite-speech-4.1-2b"),
    fixture="tiny",
    tied_head=False,
    # 4.1's card asks for punctuation and capitalisation. 4.0's instruction works on every checkpoint of the
    # entry (4.1 then writes unpunctuated text), so a name that says nothing gets it; the built-in tiny and
    # trained checkpoints were built and trained with it.
    styles=(("4.1", PromptStyle(INSTRUCTION_4_1)), ("", PromptStyle(INSTRUCTION_4_0))),
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
    styles=(("4.1-2b-plus", PLUS_STYLE), ("", PLUS_STYLE)),
    notes="the encoder concatenates cat_hidden_layers before the projector; the graph IO is unchanged",
)
GRANITE_SPEECH5_CTC = Entry(
    name="granite-speech-5.0-ctc",
    model_type=CTC_MODEL_TYPE,
    model_class="GraniteSpeech5ForCTC",
    class_prefix="GraniteSpeech5",
    checkpoints=(
        "ibm-granite/granite-speech-5.0-470m-turboctc",
        "ibm-granite/granite-speech-5.0-470m-turboctc-nc",
    ),
    fixture="tiny-ctc",
    tied_head=True,  # ctc_head is encoder.out (the self-conditioning head)
    notes="a conformer with a CTC head: one graph, delta features (80 -> 160, pairs stacked -> 320), "
    "greedy CTC decoding (argmax, collapse repeats, drop blank 0), no prompt",
    contract=CTC_CONTRACT,
)
ENTRIES = (GRANITE_SPEECH, GRANITE_SPEECH_PLUS, GRANITE_SPEECH5_CTC)

REMOTE_CODE = Unsupported(
    "granite-speech-3.2",
    (),  # granite_speech with remote code: recognised by its auto_map / projector type (remote_code)
    "granite-speech-3.2 needs its own remote code (trust_remote_code: a granite_speech_qformer "
    "projector transformers does not have); export granite-speech-3.3 or 4.x instead",
)
UNSUPPORTED = (
    REMOTE_CODE,
    Unsupported(
        "granite-speech-4.1-2b-nar",
        ("granite_speech_nar",),
        "granite-speech-4.1-2b-nar (non-autoregressive) is not in transformers 5.23, only in the Hub's "
        "remote code, so there is no PyTorch reference to prove an export against",
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
                raise CheckpointError(f"{config_path}: {REMOTE_CODE.reason}")
            return entry
    raise CheckpointError(
        f"{config_path} has model_type {model_type!r}, which granite-onnx does not export; supported: "
        f"{supported_text()}"
    )


def graphs_of_model_type(model_type: object) -> tuple[str, ...]:
    """The model graphs of the entry whose ``model_type`` this is; the autoregressive three for anything
    else (an unknown type is refused where it is validated, not here)."""
    entry = next((e for e in ENTRIES if e.model_type == model_type), GRANITE_SPEECH)
    return entry.graphs


def entry_named(name: str) -> Entry:
    """The entry called ``name`` (its ``name`` or ``model_type``)."""
    for entry in ENTRIES:
        if name in (entry.name, entry.model_type):
            return entry
    raise KeyError(name)


# The tiny random checkpoints (`--model NAME`): each entry's own, plus granite_speech with a 3.3-style LoRA.
FIXTURES = {**{e.fixture: e.model_type for e in ENTRIES}, "tiny-lora": GRANITE_SPEECH.model_type}


def entry_of_fixture(model: str) -> Entry | None:
    """The entry of the tiny random checkpoint ``--model model`` (tiny, tiny-plus, tiny-lora), else None."""
    family = FIXTURES.get(model)
    return entry_named(family) if family else None
