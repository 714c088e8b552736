"""One trace-friendly ``nn.Module`` per graph: plain tensors in, plain tensors out.

Each wrapper reproduces a piece of ``GraniteSpeechForConditionalGeneration.forward`` with the
parts tracing cannot follow replaced: no ``DynamicCache`` crosses the graph boundary, the causal
mask is built explicitly (the masking utilities take branches on values when the mask is None),
and the audio merge is a gather instead of ``masked_scatter`` on a boolean index.

The logits are what ``GraniteSpeechForConditionalGeneration`` returns at the pinned transformers
(since 5.10 it does not divide by ``text_config.logits_scaling``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..specs import ModelDims


def additive_causal_mask(attention_mask: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, query, key] additive mask: 0 where a query may attend, the dtype's min elsewhere.

    Queries are the last ``query_length`` positions of the ``attention_mask`` columns (the rest is
    past). This is the mask transformers' eager path builds from a 2-D padding mask.
    """
    key_length = attention_mask.shape[1]
    past = key_length - query_length
    q_pos = torch.arange(query_length, device=attention_mask.device).unsqueeze(-1) + past
    k_pos = torch.arange(key_length, device=attention_mask.device).unsqueeze(0)
    allowed = (k_pos <= q_pos).unsqueeze(0).unsqueeze(0) & (attention_mask != 0).unsqueeze(1).unsqueeze(1)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _flatten_cache(cache) -> tuple[torch.Tensor, ...]:
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return tuple(out)


class EncoderGraph(nn.Module):
    """Stacked log-mel -> projected audio embeddings (conformer encoder + Q-Former projector).

    Export it inside :func:`granite_onnx.export.patches.dynamic_length_patches`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.model.encoder
        self.projector = model.model.projector

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_features, return_dict=True).last_hidden_state
        return self.projector(hidden)


class _LanguageModelGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head

    def _run(self, inputs_embeds, attention_mask, position_ids, cache) -> tuple[torch.Tensor, ...]:
        mask = additive_causal_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        return (logits, *_flatten_cache(cache))

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.language_model.config)


class PromptEncodeGraph(_LanguageModelGraph):
    """The whole prompt with audio embeddings merged at the audio token -> last logits + every layer's KV.

    Upstream replaces audio-token ids by 0 before the embedding lookup and then ``masked_scatter``s
    the audio embeddings in order; here the k-th audio position of a row takes ``audio_embeds[row, k]``
    through a gather, which is the same when each row holds its own embeddings in order.
    """

    def __init__(self, model: nn.Module, dims: ModelDims):
        super().__init__(model)
        self.audio_token_id = dims.audio_token_id

    def forward(self, input_ids, audio_embeds, attention_mask, position_ids):
        is_audio = input_ids == self.audio_token_id
        embeds = self.language_model.get_input_embeddings()(torch.where(is_audio, 0, input_ids))
        slot = (torch.cumsum(is_audio.to(torch.int64), dim=1) - 1).clamp(min=0)
        index = slot.unsqueeze(-1).expand(-1, -1, audio_embeds.shape[-1])
        merged = torch.where(is_audio.unsqueeze(-1), torch.gather(audio_embeds, 1, index), embeds)
        return self._run(merged, attention_mask, position_ids, self._new_cache())


class DecodeStepGraph(_LanguageModelGraph):
    """One token + past KV (un-expanded GQA heads) -> logits + present KV (past with this step appended)."""

    def forward(self, input_ids, attention_mask, position_ids, *past_key_values):
        cache = self._new_cache()
        for layer in range(len(past_key_values) // 2):
            cache.update(past_key_values[2 * layer], past_key_values[2 * layer + 1], layer)
        embeds = self.language_model.get_input_embeddings()(input_ids)
        return self._run(embeds, attention_mask, position_ids, cache)


class CtcGraph(nn.Module):
    """``GraniteSpeech5ForCTC.forward``: features + frame mask -> CTC logits (greedy decoding is the
    runtime's: argmax, collapse, drop the blank)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=input_features, attention_mask=attention_mask).logits


def build_wrapper(name: str, model: nn.Module, dims) -> nn.Module:
    from ..specs import CTC, DECODE_STEP, ENCODER, PROMPT_ENCODE

    if name == CTC:
        return CtcGraph(model).eval()
    if name == ENCODER:
        return EncoderGraph(model).eval()
    if name == PROMPT_ENCODE:
        return PromptEncodeGraph(model, dims).eval()
    if name == DECODE_STEP:
        return DecodeStepGraph(model).eval()
    raise ValueError(f"unknown graph {name!r}")
