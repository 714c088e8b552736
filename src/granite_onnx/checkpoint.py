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

if TYPE_CHECKING:
    from transformers import GraniteSpeechForConditionalGeneration

TINY_MODEL = "tiny"
AUDIO_TOKEN = "<|audio|>"
SUPPORTED_MODEL_TYPE = "granite_speech"
EXAMPLE_MODEL_ID = "ibm-granite/granite-speech-4.1-2b"

# transformers' defaults, for configs that leave the key out.
DEFAULT_HAS_LORA_ADAPTER = True  # GraniteSpeechConfig
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
# What a Hub download fetches: enough to validate, export and tokenise. adapter_config.json is small and
# lets validation recognise a LoRA checkpoint; the adapter weights themselves are left behind.
HUB_ALLOW_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
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
    if model == TINY_MODEL:
        if revision is not None:
            raise _error("--revision does not apply to --model tiny (the built-in checkpoint has none)")
        from granite_onnx.fixtures import tiny_checkpoint_dir

        return CheckpointSource(path=tiny_checkpoint_dir(), model_id=TINY_MODEL, is_fixture=True)
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
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _error(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): re-download the checkpoint"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"cannot read {path} ({exc}): check the file and its permissions") from exc


def _has_weights(path: Path) -> bool:
    return any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def _tokenizer_audio_id(tokenizer_json: Path) -> int | None:
    """The id ``tokenizer.json`` gives ``<|audio|>`` (added tokens first, then the model vocab)."""
    data = _read_json(tokenizer_json)
    if not isinstance(data, dict):
        raise _error(f"{tokenizer_json} is not a tokenizers file: re-download the checkpoint")
    for token in data.get("added_tokens") or []:
        if isinstance(token, dict) and token.get("content") == AUDIO_TOKEN:
            return token.get("id")
    vocab = (data.get("model") or {}).get("vocab")
    return vocab.get(AUDIO_TOKEN) if isinstance(vocab, dict) else None


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """Check that ``path`` is a supported Granite Speech checkpoint; return its parsed config.json.

    Every failure is a CheckpointError whose one-line message names the file and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise _error(
            f"checkpoint folder {path} does not exist: pass --model-dir a downloaded Granite Speech folder, "
            f"or --model {EXAMPLE_MODEL_ID}"
        )
    if not path.is_dir():
        raise _error(f"{path} is not a folder: pass --model-dir the checkpoint folder that holds config.json")

    config_path = path / "config.json"
    if not config_path.is_file():
        raise _error(
            f"{config_path} is missing: point --model-dir at the folder that holds the checkpoint's "
            "config.json and weights"
        )
    config = _read_json(config_path)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != SUPPORTED_MODEL_TYPE:
        raise _error(
            f"{config_path} has model_type {model_type!r}, not {SUPPORTED_MODEL_TYPE!r}: point "
            f"--model-dir at a Granite Speech checkpoint such as {EXAMPLE_MODEL_ID}"
        )

    if config.get("has_lora_adapter", DEFAULT_HAS_LORA_ADAPTER) or (path / "adapter_config.json").exists():
        where = path / "adapter_config.json" if (path / "adapter_config.json").exists() else config_path
        raise _error(
            f"{where}: Granite Speech 3.3-style LoRA checkpoints are not supported (audio needs the LoRA "
            f"adapter); use a checkpoint with has_lora_adapter false, such as {EXAMPLE_MODEL_ID}"
        )

    if not _has_weights(path):
        raise _error(
            f"{path} has no weights (model*.safetensors, pytorch_model*.bin or an index): download the "
            "weight files into the folder too"
        )

    tokenizer_path = path / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise _error(f"{tokenizer_path} is missing: download the tokenizer files of the checkpoint too")

    _check_audio_token(config, config_path, tokenizer_path)
    return config


def _check_audio_token(config: dict[str, Any], config_path: Path, tokenizer_path: Path) -> None:
    """The audio placeholder id must be inside the LLM vocabulary and agree with the tokenizer."""
    audio_id = config.get("audio_token_index", config.get("audio_token_id", DEFAULT_AUDIO_TOKEN_INDEX))
    text_config = config.get("text_config") or {}
    vocab_size = text_config.get("vocab_size", DEFAULT_TEXT_VOCAB_SIZE)
    if not (isinstance(audio_id, int) and isinstance(vocab_size, int) and 0 <= audio_id < vocab_size):
        raise _error(
            f"{config_path}: audio_token_index {audio_id} is outside the text vocabulary "
            f"(text_config.vocab_size {vocab_size}): the config is corrupt or from another model"
        )
    tokenizer_id = _tokenizer_audio_id(tokenizer_path)
    if tokenizer_id is None:
        raise _error(
            f"{tokenizer_path} has no {AUDIO_TOKEN} token: use the tokenizer shipped with the checkpoint"
        )
    if tokenizer_id != audio_id:
        raise _error(
            f"{tokenizer_path} gives {AUDIO_TOKEN} id {tokenizer_id} but {config_path} says "
            f"audio_token_index {audio_id}: use the tokenizer shipped with this checkpoint"
        )


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


def load_reference_model(path: Path) -> GraniteSpeechForConditionalGeneration:
    """Validate, then load the PyTorch reference in float32 with eager attention, in eval mode.

    Eager attention is the plainest maths to trace and to compare against; float32 is the parity baseline.
    """
    validate_checkpoint(path)
    import torch
    from transformers import GraniteSpeechForConditionalGeneration

    model = GraniteSpeechForConditionalGeneration.from_pretrained(
        Path(path), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()
