"""Build the prompt token ids without transformers: the checkpoint's chat template + tokenizer.json.

This mirrors what ``GraniteSpeechProcessor`` does: render the chat template with
``add_generation_prompt=True``, repeat the audio placeholder once per audio embedding, tokenize.
The jinja environment matches transformers' ``apply_chat_template`` (sandboxed, trim_blocks,
lstrip_blocks, ``raise_exception`` and ``strftime_now`` helpers) so real templates render the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ..errors import BundleError
from ..userfiles import one_line, read_json_object

AUDIO_PLACEHOLDER = "<|audio|>"
DEFAULT_INSTRUCTION = "can you transcribe the speech into a written format?"
_COPIED = "export again, it is copied from the checkpoint"
# What the export decided about the prompt (granite_onnx.registry: the entry's system turn, the text between
# the audio placeholder and the instruction, the default instruction and the tasks), beside the graphs.
PROMPTS_FILE = "granite_prompts.json"
ASR = "asr"


@dataclass(frozen=True)
class PromptStyle:
    """How a checkpoint's model card builds its prompts: an optional system turn, then one user turn of
    ``placeholder + separator + instruction``; ``tasks`` maps ``transcribe --task`` names to instructions."""

    instruction: str = DEFAULT_INSTRUCTION
    system: str | None = None
    separator: str = ""
    tasks: tuple[tuple[str, str], ...] = ()
    source: str = "granite-onnx default"  # why this instruction (a Hub id, the fixture, --prompt, ...)

    def task_instruction(self, task: str) -> str:
        if task == ASR:
            return self.instruction
        known = dict(self.tasks)
        if task not in known:
            choices = ", ".join([ASR, *known])
            raise BundleError(f"this bundle's model has no task {task!r}; choose from {choices}")
        return known[task]

    def to_json(self) -> dict:
        return {
            "instruction": self.instruction,
            "system": self.system,
            "separator": self.separator,
            "tasks": dict(self.tasks),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict, where: Path) -> PromptStyle:
        try:
            tasks = data.get("tasks") or {}
            style = cls(
                instruction=data["instruction"],
                system=data.get("system"),
                separator=data.get("separator", ""),
                tasks=tuple(tasks.items()),
                source=data.get("source", "granite-onnx default"),
            )
        except (KeyError, AttributeError, TypeError) as exc:
            raise BundleError(
                f"{where} is not a prompt description ({type(exc).__name__}): export again"
            ) from exc
        texts = [style.instruction, style.separator, *(t for pair in style.tasks for t in pair)]
        if not all(isinstance(t, str) for t in texts) or not isinstance(style.system, str | None):
            raise BundleError(f"{where}: prompts must be strings: export again")
        return style


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _template_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@dataclass(frozen=True)
class PromptParts:
    """The prompt as three id lists: ``prefix + [audio_token_id] * n + suffix`` is the rendered chat
    prompt for ``n`` audio embeddings. A consumer outside Python builds it without a template engine or
    a tokenizer's encoder (the metadata records these ids; ``tests/test_prompt_parts.py`` proves the
    equality with the chat template's rendering for every ``n`` the positions allow)."""

    instruction: str
    prefix_ids: tuple[int, ...]
    audio_token_id: int
    suffix_ids: tuple[int, ...]

    def ids(self, audio_tokens: int) -> list[int]:
        return [*self.prefix_ids, *[self.audio_token_id] * audio_tokens, *self.suffix_ids]

    def max_audio_tokens(self, max_positions: int, max_new_tokens: int = 0) -> int:
        """The most audio embeddings a prompt holds with ``max_new_tokens`` still to generate."""
        return max(0, max_positions - len(self.prefix_ids) - len(self.suffix_ids) - max_new_tokens)


@dataclass(frozen=True)
class PromptBuilder:
    """Chat template + tokenizer of a bundle (or checkpoint) folder."""

    folder: Path

    @cached_property
    def tokenizer(self) -> Tokenizer:
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{path} is missing: export again, it is copied from the checkpoint")
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for every malformed file
            raise BundleError(
                f"{path} is not a tokenizers file ({one_line(exc, 120)}): export again, it is copied from "
                "the checkpoint"
            ) from exc

    @cached_property
    def _tokenizer_config(self) -> dict:
        path = self.folder / "tokenizer_config.json"
        return read_json_object(path, BundleError, _COPIED) if path.is_file() else {}

    @cached_property
    def chat_template(self) -> str:
        path = self.folder / "chat_template.jinja"
        if path.is_file():
            try:
                return path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise BundleError(
                    f"cannot read {path} as UTF-8 text ({type(exc).__name__}): {_COPIED}"
                ) from exc
        template = self._tokenizer_config.get("chat_template")
        if not isinstance(template, str):
            raise BundleError(
                f"{self.folder} has no chat_template.jinja (nor a chat_template in tokenizer_config.json)"
            )
        return template

    @cached_property
    def audio_placeholder(self) -> str:
        path = self.folder / "processor_config.json"
        config = read_json_object(path, BundleError, _COPIED) if path.is_file() else {}
        token = config.get("audio_token", AUDIO_PLACEHOLDER)
        if not isinstance(token, str) or not token:
            raise BundleError(f"{path}: audio_token must be a non-empty string, got {token!r:.60}: {_COPIED}")
        return token

    @cached_property
    def style(self) -> PromptStyle:
        """The bundle's ``granite_prompts.json`` (written by export), else the 4.0-style default."""
        path = self.folder / PROMPTS_FILE
        if not path.is_file():
            return PromptStyle()
        return PromptStyle.from_json(read_json_object(path, BundleError, "export again"), path)

    def special_token(self, key: str) -> str | None:
        value = self._tokenizer_config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    def render(self, instruction: str | None = None) -> str:
        """The chat prompt text with one audio placeholder, as the model card's usage example builds it
        (``instruction`` None: the bundle's default)."""
        style = self.style
        text = style.instruction if instruction is None else instruction
        messages = [{"role": "system", "content": style.system}] if style.system else []
        messages.append({"role": "user", "content": f"{self.audio_placeholder}{style.separator}{text}"})
        template = _template_env().from_string(self.chat_template)
        tokens = {k: self.special_token(k) for k in ("bos_token", "eos_token", "pad_token")}
        return template.render(messages=messages, add_generation_prompt=True, **tokens)

    def input_ids(self, audio_tokens: int, instruction: str | None = None) -> list[int]:
        """Prompt ids with the placeholder repeated ``audio_tokens`` times (one per audio embedding)."""
        try:
            text = self.render(instruction)
        except jinja2.TemplateError as exc:
            raise BundleError(
                f"the chat template of {self.folder} does not render ({one_line(exc, 120)}): {_COPIED}"
            ) from exc
        if text.count(self.audio_placeholder) != 1:
            raise BundleError(
                f"the chat prompt must hold exactly one {self.audio_placeholder}; got: {text!r}"
            )
        text = text.replace(self.audio_placeholder, self.audio_placeholder * audio_tokens)
        return self.tokenizer.encode(text).ids

    def parts(self, instruction: str | None = None) -> PromptParts:
        """Split the one-placeholder prompt's ids at the placeholder (see :class:`PromptParts`)."""
        audio_id = self.tokenizer.token_to_id(self.audio_placeholder)
        if audio_id is None:
            raise BundleError(
                f"{self.folder / 'tokenizer.json'} has no token {self.audio_placeholder}: {_COPIED}"
            )
        ids = self.input_ids(1, instruction)
        where = [i for i, t in enumerate(ids) if t == audio_id]
        if len(where) != 1:
            raise BundleError(
                f"the prompt of {self.folder} tokenizes to {len(where)} {self.audio_placeholder} ids, "
                f"not one: {_COPIED}"
            )
        at = where[0]
        text = self.style.instruction if instruction is None else instruction
        return PromptParts(text, tuple(ids[:at]), audio_id, tuple(ids[at + 1 :]))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
