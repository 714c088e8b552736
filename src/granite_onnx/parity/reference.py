"""The PyTorch reference: transformers' ``GraniteSpeechForConditionalGeneration``, unpatched.

Parity is measured against what a user of transformers gets, so nothing here goes through the
export wrappers or patches: features in, ``model.generate`` (greedy) out. Features come from the
same numpy front-end as the ONNX runtime, so both sides see identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ReferenceGreedy:
    token_ids: tuple[int, ...]  # generated ids, eos excluded
    step_logits: np.ndarray  # [steps, vocab] logits of each generated step (eos step included)


@torch.no_grad()
def audio_embeds(model, features: np.ndarray) -> np.ndarray:
    """Encoder + projector on [batch, frames, 160] features."""
    return model.get_audio_features(torch.from_numpy(features), return_dict=True).pooler_output.numpy()


@torch.no_grad()
def greedy(model, input_ids: np.ndarray, features: np.ndarray, max_new_tokens: int) -> ReferenceGreedy:
    """``model.generate`` with greedy decoding for one utterance (batch 1)."""
    ids = torch.from_numpy(input_ids)
    out = model.generate(
        input_ids=ids,
        input_features=torch.from_numpy(features),
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = out.sequences[0, ids.shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    tokens = tuple(t for t in new if t not in eos)
    logits = torch.stack(out.logits)[:, 0].numpy()
    return ReferenceGreedy(tokens, logits)


@torch.no_grad()
def prompt_outputs(model, input_ids: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Last-position logits and every layer's key/value (spec order) for the whole prompt."""
    ids = torch.from_numpy(input_ids)
    out = model(
        input_ids=ids,
        input_features=torch.from_numpy(features),
        attention_mask=torch.ones_like(ids),
        use_cache=True,
    )
    kv = []
    for layer in out.past_key_values.layers:
        kv += [layer.keys.numpy(), layer.values.numpy()]
    return out.logits[:, -1].numpy(), kv
