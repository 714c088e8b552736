"""Find a Granite Speech checkpoint and check it before any heavy work starts.

``--model-dir``, ``--model ID`` and ``--model tiny`` all end here as a :class:`CheckpointSource`.
:func:`validate_checkpoint` reads only small JSON files, so a wrong folder fails in milliseconds with
one line naming the file and the fix, not minutes later inside torch. torch and transformers are
imported inside the functions that need them: the ONNX runtime side imports this module without them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granite_onnx.errors import CheckpointError
from granite_onnx.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraSpec, base_view, merge_lora, read_lora
from granite_onnx.registry import CTC_CONTRACT, entry_for_config, entry_of_fixture
from granite_onnx.specs import CtcDims
from granite_onnx.userfiles import exists, is_dir, is_file, json_kind, read_json

if TYPE_CHECKING:
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_onnx.registry import Entry

# A small Granite Speech trained on synthetic speech (training/): shipped with the package, so its
# quantisation quality can be measured where the real checkpoint cannot be downloaded.
TRAINED_MODEL = "trained"
TRAINED_DIR = Path(__file__).resolve().parent / "assets" / "trained"
AUDIO_TOKEN = "<|audio|>"
EXAMPLE_MODEL_ID = "ibm-granite/granite-speech-4.1-2b"

# transformers' defaults, for configs that leave the key out.
DEFAULT_AUDIO_TOKEN_INDEX = 49155  # GraniteSpeechConfig
DEFAULT_TEXT_VOCAB_SIZE = 32000  # GraniteConfig

PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
# What a bundle carries from its checkpoint: the processor files plus the configs the runtime reads.
BUNDLE_CHECKPOINT_FILES = (*PROCESSOR_FILES, "config.json", "generation_config.json")
WEIGHT_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# What a Hub download fetches: enough to validate, export and tokenise, with a 3.3-style LoRA adapter's
# config and weights (the export merges them).
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers too
REDOWNLOAD = "re-download the checkpoint"
HUB_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    *PROCESSOR_FILES,
)


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint came from: recorded in the bundle metadata, used to load it."""

    path: Path
    model_id: str | None = None
    revision: str | None = None
    is_fixture: bool = False


def _error(message: str) -> CheckpointError:
    """A CheckpointError whose message is one line (the CLI prints it as is)."""
    return CheckpointError(" ".join(message.splitlines()))


def resolve_checkpoint(
    model_dir: Path | None, model: str | None, revision: str | None = None
) -> CheckpointSource:
    """Turn ``--model-dir`` or ``--model`` (exactly one) into a local folder; does not validate it."""
    if (model_dir is None) == (model is None):
        raise _error("pass exactly one of --model-dir FOLDER or --model ID (a Hub id, or 'tiny')")
    if model_dir is not None:
        if revision is not None:
            raise _error("--revision applies to --model ID only; a --model-dir folder is used as it is")
        return CheckpointSource(path=Path(model_dir).expanduser())
    fixture = entry_of_fixture(model)
    if fixture is not None:  # tiny, tiny-plus: an entry's tiny random checkpoint
        if revision is not None:
            raise _error(f"--revision does not apply to --model {model} (the built-in checkpoint has none)")
        from granite_onnx.fixtures import fixture_spec, tiny_checkpoint_dir

        path = tiny_checkpoint_dir(fixture_spec(model))
        return CheckpointSource(path=path, model_id=model, is_fixture=True)
    if model == TRAINED_MODEL:
        if revision is not None:
            raise _error("--revision does not apply to --model trained (it ships with granite-onnx)")
        return CheckpointSource(path=TRAINED_DIR, model_id=TRAINED_MODEL, is_fixture=True)
    return CheckpointSource(path=_download(model, revision), model_id=model, revision=revision)


def _download(model_id: str, revision: str | None) -> Path:
    """``snapshot_download`` of the files export needs; Hub failures become one-line CheckpointErrors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{model_id}@{revision}" if revision else model_id
    try:
        return Path(snapshot_download(model_id, revision=revision, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except GatedRepoError as exc:
        raise _error(f"{at} is gated: accept its licence on huggingface.co and set HF_TOKEN") from exc
    except RepositoryNotFoundError as exc:
        raise _error(
            f"{model_id} was not found on the Hub (or is private): check the id, e.g. {EXAMPLE_MODEL_ID}"
        ) from exc
    except RevisionNotFoundError as exc:
        raise _error(f"{model_id} has no revision {revision!r}: check --revision") from exc
    except HFValidationError as exc:
        raise _error(
            f"{model_id!r} is not a Hub model id: pass --model OWNER/NAME, or --model-dir FOLDER for a local "
            "checkpoint"
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise _error(
            f"could not download {at} from the Hugging Face Hub ({type(exc).__name__}): check the network, "
            "or download it elsewhere and pass --model-dir FOLDER"
        ) from exc


def _read_json(path: Path) -> Any:
    """Parse a JSON file of the checkpoint, or fail naming it."""
    try:
        return read_json(path, CheckpointError, REDOWNLOAD)
    except CheckpointError as exc:
        raise _error(str(exc)) from exc.__cause__  # one line even when the path holds a newline


def _has_weights(path: Path) -> bool:
    return any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS)


# --- partial downloads: cheap structural checks of the weight files, no tensor is read --------------


def _check_index(folder: Path, index: Path) -> None:
    """Every shard an index's ``weight_map`` names must be in the folder: an interrupted download of a
    sharded checkpoint leaves the index and some shards, and transformers would fail minutes later."""
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _error(f"{index} has no weight_map object naming the shards: {REDOWNLOAD}")
    shards = list(dict.fromkeys(weight_map.values()))
    for shard in shards:
        if not isinstance(shard, str) or not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise _error(
                f"{index} names a shard {str(shard)[:60]!r} that is not a file in {folder}: {REDOWNLOAD}"
            )
    missing = [shard for shard in shards if not is_file(folder / shard)]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(shards)})" if len(missing) > 1 else ""
        raise _error(
            f"{folder / missing[0]} is missing{more} but {index.name} names it: the download was "
            f"interrupted, {REDOWNLOAD}"
        )


def _safetensors_size(path: Path) -> int | str:
    """The size the header of a ``.safetensors`` file says it has, or why the header is unreadable.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    ``data_offsets`` [start, end) into the data that follows, then the data; a whole file is exactly
    ``8 + header length + the largest end`` bytes. Only the header is read.
    """
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return 8
        length = int.from_bytes(head, "little")
        if length > SAFETENSORS_MAX_HEADER:
            return f"its header claims {length} bytes"
        raw = fh.read(length)
    if len(raw) < length:
        return 8 + length
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return f"tensor {str(name)[:60]!r} has no valid data_offsets"
        end = max(end, offsets[1])
    return 8 + length + end


def _check_safetensors(path: Path) -> None:
    """A ``.safetensors`` file must be exactly as long as its header says (truncated = partial download)."""
    try:
        size = path.stat().st_size
        expected = _safetensors_size(path)
    except OSError as exc:
        raise _error(
            f"cannot read {path} ({exc.strerror or type(exc).__name__}): check the file and its permissions"
        ) from exc
    if isinstance(expected, str):
        raise _error(f"{path} is not a valid safetensors file ({expected}): re-download it")
    if size < expected:
        raise _error(f"{path} is truncated ({size} of {expected} bytes): re-download it")
    if size > expected:
        raise _error(
            f"{path} is corrupt ({size} bytes where its header describes {expected}): re-download it"
        )


def _check_weight_files(folder: Path) -> None:
    """Fail fast on a partial checkpoint: shards an index names but the folder lacks, truncated files."""
    for name in WEIGHT_INDEXES:
        if (folder / name).is_file():
            _check_index(folder, folder / name)
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(path)


def _tokenizer_audio_id(tokenizer_json: Path) -> object:
    """The id ``tokenizer.json`` gives ``<|audio|>`` (added tokens first, then the model vocab); None
    when it has none. Whatever the file holds there is returned as is: the caller compares it."""
    data = _read_json(tokenizer_json)
    if not isinstance(data, dict):
        raise _error(f"{tokenizer_json} is not a tokenizers file: re-download the checkpoint")
    added = data.get("added_tokens")
    for token in added if isinstance(added, list) else []:
        if isinstance(token, dict) and token.get("content") == AUDIO_TOKEN:
            return token.get("id")
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    return vocab.get(AUDIO_TOKEN) if isinstance(vocab, dict) else None


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Check that ``path`` is a supported Granite Speech checkpoint; return its parsed config.json.

    Every failure is a CheckpointError whose one-line message names the file and the fix.
    """
    path = Path(path)
    if not exists(path):
        raise _error(
            f"checkpoint folder {path} does not exist: pass --model-dir a downloaded Granite Speech folder, "
            f"or --model {EXAMPLE_MODEL_ID}"
        )
    if not is_dir(path):
        raise _error(f"{path} is not a folder: pass --model-dir the checkpoint folder that holds config.json")

    config_path = path / "config.json"
    if not is_file(config_path):
        raise _error(
            f"{config_path} is missing: point --model-dir at the folder that holds the checkpoint's "
            "config.json and weights"
        )
    config = _read_json(config_path)
    entry = entry_for_config(config, config_path)  # one line naming the supported architectures otherwise

    # The adapter files decide, not the config's has_lora_adapter: transformers enables an adapter only when
    # one is loaded, and 4.1-2b-plus-style configs set the flag with no adapter to load. A 3.3-style adapter
    # is validated here (plain LoRA on the LLM's linear layers) and merged by the export.
    read_lora(path)

    if not _has_weights(path):
        raise _error(
            f"{path} has no weights (model*.safetensors, pytorch_model*.bin or an index): download the "
            "weight files into the folder too"
        )
    _check_weight_files(path)

    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise _error(f"{tokenizer_path} is missing: download the tokenizer files of the checkpoint too")

    if entry.contract == CTC_CONTRACT:
        try:
            CtcDims.from_config(config)
        except ValueError as exc:
            raise _error(f"{config_path}: {exc}: {REDOWNLOAD}") from exc
    else:
        _check_audio_token(config, config_path, tokenizer_path)
    return config


def _check_audio_token(config: dict[str, Any], config_path: Path, tokenizer_path: Path) -> None:
    """The audio placeholder id must be inside the LLM vocabulary and agree with the tokenizer."""
    audio_id = config.get("audio_token_index", config.get("audio_token_id", DEFAULT_AUDIO_TOKEN_INDEX))
    text_config = config.get("text_config") or {}
    if not isinstance(text_config, dict):
        raise _error(
            f"{config_path}: text_config is a JSON {json_kind(text_config)}, not an object: {REDOWNLOAD}"
        )
    vocab_size = text_config.get("vocab_size", DEFAULT_TEXT_VOCAB_SIZE)
    if not (_is_int(audio_id) and _is_int(vocab_size) and 0 <= audio_id < vocab_size):
        raise _error(
            f"{config_path}: audio_token_index {str(audio_id)[:60]} is outside the text vocabulary "
            f"(text_config.vocab_size {str(vocab_size)[:60]}): the config is corrupt or from another model"
        )
    tokenizer_id = _tokenizer_audio_id(tokenizer_path)
    if tokenizer_id is None:
        raise _error(
            f"{tokenizer_path} has no {AUDIO_TOKEN} token: use the tokenizer shipped with the checkpoint"
        )
    if not _is_int(tokenizer_id) or tokenizer_id != audio_id:
        raise _error(
            f"{tokenizer_path} gives {AUDIO_TOKEN} id {str(tokenizer_id)[:60]} but {config_path} says "
            f"audio_token_index {audio_id}: use the tokenizer shipped with this checkpoint"
        )


def _is_int(value: object) -> bool:
    """A JSON integer (``true`` is not an id, though Python's bool is an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def copy_processor_files(src: Path, dst: Path, names: tuple[str, ...] = PROCESSOR_FILES) -> list[str]:
    """Copy the tokenizer / processor files (or ``names``) present in ``src`` into ``dst`` (0644).

    A bundle must tokenise and build prompts without the original checkpoint, so these travel with it.
    Hub snapshots hold symlinks: the copy follows them and writes plain files.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            (dst / name).chmod(0o644)
            copied.append(name)
    return copied


def checkpoint_entry(path: Path) -> Entry:
    """The registry entry of a checkpoint folder (validated)."""
    config = validate_checkpoint(path)
    return entry_for_config(config, Path(path) / "config.json")


def load_reference_model(path: Path) -> GraniteSpeechForConditionalGeneration:
    """Validate, then load the PyTorch reference (its entry's transformers class) in float32 with eager
    attention, in eval mode.

    Eager attention is the plainest maths to trace and to compare against; float32 is the parity baseline.
    """
    model = _load(checkpoint_entry(path), path)
    if read_lora(path) is not None and not getattr(model, "_hf_peft_config_loaded", False):
        # transformers without peft loads a LoRA checkpoint silently without its adapter: parity would then
        # pass against the wrong model.
        raise _error(
            f"{Path(path) / ADAPTER_CONFIG}: transformers did not attach the adapter (is peft installed? "
            "pip install 'granite-onnx[export]')"
        )
    return model


def load_export_model(path: Path) -> tuple[GraniteSpeechForConditionalGeneration, LoraSpec | None]:
    """The model the export traces: the reference's weights, with a LoRA adapter merged into the LLM
    (``W += alpha / r * B @ A``) instead of attached, so the graphs hold plain weights."""
    entry = checkpoint_entry(path)
    spec = read_lora(path)
    if spec is None:
        return _load(entry, path), None
    with base_view(path) as base:  # the base weights alone: peft would attach the adapter itself
        model = _load(entry, base)
    merge_lora(model, Path(path), spec)
    return model, spec


def _load(entry: Entry, folder: Path | str):
    """``from_pretrained`` of the entry's transformers class, float32, eager attention, eval mode."""
    import torch
    import transformers

    model_class = getattr(transformers, entry.model_class)
    return model_class.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()
