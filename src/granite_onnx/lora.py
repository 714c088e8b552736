"""Granite Speech 3.3's LoRA adapter: validated from its files, merged into the LLM before tracing.

3.3 checkpoints ship ``adapter_config.json`` and ``adapter_model.safetensors`` beside the base weights
(rank 64, alpha 32, on the LLM's q_proj and v_proj). ``generate()`` enables the adapter whenever audio is
present, so the merged weights ``W + (alpha / r) * B @ A`` are what speech recognition uses; a bundle made
from them is speech-only (a text-only prompt would need the base weights). The merge is computed in float64
and rounded once to float32, so its bytes do not depend on the CPU.

Only plain LoRA is merged. Each setting that would make ``W + (alpha / r) * B @ A`` the wrong formula
(rsLoRA's alpha / sqrt(r), DoRA's magnitudes, per-layer rank or alpha patterns, trained biases, modules saved
in full, targets outside the LLM's linear layers) is refused in one line naming the key.

The validation is torch-free (``validate_checkpoint`` runs it before any model is loaded); the merge needs
torch and safetensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .userfiles import is_file, json_kind

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin")
# The Granite LLM's linear layers (GraniteAttention, GraniteMLP): the only modules a merge may touch.
LLM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PREFIX = "base_model.model."  # peft's prefix in adapter_model.safetensors


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_json(self) -> dict:
        return {
            "merged": True,
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "targets": list(self.targets),
            "speech_only": True,
        }


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; granite-onnx merges plain LoRA only (W += alpha / r * B @ A)")


def has_adapter(folder: Path) -> bool:
    return any(is_file(Path(folder) / name) for name in ADAPTER_FILES)


def read_lora(folder: Path) -> LoraSpec | None:
    """The adapter of a checkpoint folder, validated; None when the folder has no adapter files."""
    folder = Path(folder)
    if not has_adapter(folder):
        return None
    path, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not is_file(path):
        raise CheckpointError(f"{folder} has adapter weights but no {ADAPTER_CONFIG}: download it too")
    if not is_file(weights):
        raise CheckpointError(f"{weights} is missing: download the adapter weights (safetensors) too")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({type(exc).__name__}): re-download it") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is a JSON {json_kind(config)}, not an object: re-download it")
    if config.get("peft_type") != "LORA":
        raise _refuse(path, f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise _refuse(path, f"r must be a positive integer, got {rank!r:.40}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise _refuse(path, f"lora_alpha must be a positive number, got {alpha!r:.40}")
    special = (("use_rslora", "rsLoRA scales by alpha / sqrt(r)"), ("use_dora", "DoRA adds magnitudes"))
    for key, what in special:
        if config.get(key):
            raise _refuse(path, f"{key} is set ({what})")
    for key in (
        "rank_pattern",
        "alpha_pattern",
        "modules_to_save",
        "layers_to_transform",
        "layer_replication",
    ):
        if config.get(key):
            raise _refuse(path, f"{key} is set ({str(config[key])[:60]})")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise _refuse(path, f"bias is {config.get('bias')!r} (trained biases are not merged)")
    if config.get("fan_in_fan_out"):
        raise _refuse(path, "fan_in_fan_out is set (Conv1D-style weights)")
    targets = config.get("target_modules")
    if isinstance(targets, str) or not isinstance(targets, list) or not targets:
        raise _refuse(path, f"target_modules must be a list of LLM linear layers, got {str(targets)[:60]}")
    outside = [t for t in targets if t not in LLM_LINEAR]
    if outside:
        raise _refuse(path, f"target_modules {outside} are outside the LLM's linear layers {LLM_LINEAR}")
    return LoraSpec(rank, float(alpha), tuple(sorted(targets)))  # peft stores a set: any order


def base_view(folder: Path) -> tempfile.TemporaryDirectory:
    """A temporary folder of links to every file of ``folder`` except the adapter's: transformers with peft
    installed attaches an adapter it finds beside the weights, and the export merges it itself instead."""
    view = tempfile.TemporaryDirectory(prefix="granite-base-")
    for entry in Path(folder).iterdir():
        if entry.name not in ADAPTER_FILES:
            os.symlink(entry.resolve(), Path(view.name) / entry.name)
    return view


def merge_lora(model, folder: Path, spec: LoraSpec) -> int:
    """``W += (alpha / r) * B @ A`` for every adapted layer of ``model`` (loaded without the adapter), in
    float64, rounded once to the weight's dtype. Returns how many layers were merged; a tensor that names
    no module of the model, or whose shape does not fit, is a CheckpointError."""
    import torch
    from safetensors import safe_open

    weights = Path(folder) / ADAPTER_WEIGHTS
    modules = dict(model.named_modules())
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            name = key.removeprefix(_PREFIX)
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in name:
                    pairs.setdefault(name.split(marker)[0], {})[part] = f.get_tensor(key)
    merged = 0
    with torch.no_grad():
        for name, pair in sorted(pairs.items()):
            module = modules.get(name)
            if module is None or not hasattr(module, "weight") or "language_model" not in name:
                raise CheckpointError(f"{weights}: {name} is not a linear layer of the model's LLM")
            if set(pair) != {"lora_A", "lora_B"}:
                raise CheckpointError(f"{weights}: {name} has {sorted(pair)}, not both lora_A and lora_B")
            a, b = pair["lora_A"].double(), pair["lora_B"].double()
            if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(module.weight.shape):
                raise CheckpointError(
                    f"{weights}: {name} B {tuple(b.shape)} @ A {tuple(a.shape)} does not fit its weight "
                    f"{tuple(module.weight.shape)}"
                )
            delta = spec.scale * (b @ a)
            module.weight.copy_((module.weight.double() + delta).to(module.weight.dtype))
            merged += 1
    if merged == 0:
        raise CheckpointError(f"{weights} holds no lora_A / lora_B tensors")
    return merged
