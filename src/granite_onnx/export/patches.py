"""Scoped patches that make the audio path traceable at every length.

Upstream computes the conformer's block count with ``math.ceil`` and pads / masks only under
``if remainder > 0``; the projector does the same for its 15-frame windows. Tracing turns those
Python numbers into constants, so a graph traced at one length is silently wrong at another
(an exact multiple of 200 encoder frames is the classic case). The replacements below compute the
same quantities with tensor ops on the traced shape, producing the same numbers as upstream at
every length. The conformer's conv module gets its BatchNorm folded beforehand in float64, so that the
written weights do not depend on the CPU that exported them. They are bound to module instances inside
:func:`dynamic_length_patches` and removed on exit, so the model is left exactly as loaded.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def relative_position_scores(query: torch.Tensor, rel_pos_emb: torch.Tensor) -> torch.Tensor:
    """``einsum("b h c d, c r d -> b h c r")`` (upstream's Shaw relative-position scores) as one batched
    MatMul over the ``c`` axis. onnxruntime runs its Einsum on one thread: on the 16-core box the
    full-size encoder spent 0.265 s in it at 16 threads and 0.277 s at 4 (bench/profile_ops.py),
    15 % of the encoder, where a MatMul scales with the threads."""
    scores = torch.matmul(query.permute(2, 0, 1, 3), rel_pos_emb.transpose(1, 2).unsqueeze(1))  # [c, b, h, r]
    return scores.permute(1, 2, 0, 3)


def conformer_attention_forward(
    self, hidden_states: torch.Tensor, attention_dists: torch.Tensor
) -> torch.Tensor:
    """``GraniteSpeechConformerAttention.forward`` with the block count and mask as tensor ops.

    Upstream masks, in the last block only, every (query, key) pair where either side is padding.
    Here a position is valid when its index in the padded sequence is below the real length, which
    is the same set of pairs when there is a remainder and masks nothing when there is none.
    """
    hidden_states = self.pre_norm(hidden_states)
    bsz, num_features, _ = hidden_states.shape
    ctx = self.context_size
    pad = (ctx - num_features % ctx) % ctx
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad))
    num_blocks = hidden_states.shape[1] // ctx

    query_states = self.to_q(hidden_states)
    key_states, value_states = self.to_kv(hidden_states).chunk(2, dim=-1)
    flat_bsz = bsz * num_blocks
    query_states = query_states.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)
    key_states = key_states.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)
    value_states = value_states.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)

    rel_pos_emb = self.rel_pos_emb(attention_dists)
    pos_attn = relative_position_scores(query_states, rel_pos_emb) * self.scale

    position = torch.arange(num_blocks * ctx, device=hidden_states.device).reshape(num_blocks, ctx)
    valid = position < num_features
    keep = (valid.unsqueeze(-1) & valid.unsqueeze(-2)).unsqueeze(0).expand(bsz, -1, -1, -1)
    keep = keep.reshape(flat_bsz, 1, ctx, ctx)
    pos_attn = pos_attn.masked_fill(~keep, -torch.finfo(pos_attn.dtype).max)

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = F.scaled_dot_product_attention(
            query_states, key_states, value_states, attn_mask=pos_attn, scale=self.scale
        )
    out = out.transpose(1, 2).reshape(bsz, hidden_states.shape[1], -1)
    out = self.to_out(out[:, :num_features, :])
    return self.dropout(out)


def projector_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """``GraniteSpeechEncoderProjector.forward`` with the window count as a tensor op."""
    batch_size, seq_len, dim = hidden_states.size()
    window = self.window_size
    pad = (window - seq_len % window) % window
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad), "constant", 0)
    nblocks = hidden_states.shape[1] // window
    hidden_states = hidden_states.reshape(batch_size * nblocks, window, dim)
    query_output = self.qformer(
        query_embeds=self.query,
        encoder_hidden_states=hidden_states,
        encoder_attention_mask=None,
        return_dict=True,
    )
    queries = query_output.last_hidden_state.reshape(
        batch_size, nblocks * (window // self.downsample_rate), -1
    )
    return self.linear(queries)


FOLDED_WEIGHT, FOLDED_BIAS = "_granite_onnx_folded_weight", "_granite_onnx_folded_bias"


def fold_batch_norm(conv: nn.Conv1d, norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` followed by ``norm`` (in eval mode: running statistics) as one convolution's weight and bias,
    computed in float64 with numpy and rounded once to float32.

    The TorchScript exporter folds the pair itself, in float32 with torch's vectorised kernels, and those
    round differently on AVX2 and AVX-512 CPUs: the trained fixture's encoder sidecar came out different on
    an emulated AVX2 machine (8 tensors, up to 9.5e-7 apart). numpy's float64 multiply, divide and sqrt are
    IEEE-exact on every CPU, so the folded weights here are the same bytes everywhere."""
    weight = conv.weight.detach().cpu().numpy().astype(np.float64)
    bias = conv.bias.detach().cpu().numpy().astype(np.float64) if conv.bias is not None else 0.0
    mean = norm.running_mean.detach().cpu().numpy().astype(np.float64)
    var = norm.running_var.detach().cpu().numpy().astype(np.float64)
    gamma = norm.weight.detach().cpu().numpy().astype(np.float64) if norm.affine else 1.0
    beta = norm.bias.detach().cpu().numpy().astype(np.float64) if norm.affine else 0.0
    scale = gamma / np.sqrt(var + norm.eps)
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_bias = (bias - mean) * scale + beta
    return torch.from_numpy(folded_weight.astype(np.float32)), torch.from_numpy(
        folded_bias.astype(np.float32)
    )


def conv_module_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """``GraniteSpeechConformerConvModule.forward`` with its BatchNorm folded into the depthwise conv
    beforehand (:func:`fold_batch_norm`), so that the exporter has nothing left to fold."""
    hidden_states = self.norm(hidden_states)
    hidden_states = self.up_conv(hidden_states.permute(0, 2, 1))
    hidden_states = self.glu(hidden_states)
    depth = self.depth_conv
    hidden_states = F.pad(hidden_states, depth.padding)
    hidden_states = F.conv1d(
        hidden_states, getattr(self, FOLDED_WEIGHT), getattr(self, FOLDED_BIAS), groups=depth.conv.groups
    )
    hidden_states = self.silu(hidden_states)
    hidden_states = self.down_conv(hidden_states).permute(0, 2, 1)
    return self.dropout(hidden_states)


GROUPED_ATTENTION = "granite_onnx_grouped"


def grouped_query_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``eager_attention_forward`` for grouped-query attention without ``repeat_kv``.

    Upstream expands each KV head to its query heads before the two MatMuls, which traces to an Expand
    that copies the whole cache of every layer at every decode step (full size, past 330: 216 MB per
    token; 12 % of a 16-thread decode step, 10-15 % on 2 threads). Here the query heads of one KV head
    are stacked along the query axis instead (query head ``h`` reads KV head ``h // groups``, as
    ``repeat_kv`` has it), so the MatMuls read the cache in place. Same maths: softmax in float32, the
    mask added after scaling, no dropout at inference.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * q_len, head_dim)
    scores = (torch.matmul(grouped, key.transpose(2, 3)) * scaling).reshape(batch, heads, q_len, -1)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.reshape(batch, kv_heads, -1, key.shape[2]), value)
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous(), weights


@contextlib.contextmanager
def grouped_attention(model: nn.Module) -> Iterator[int]:
    """Run the language model's attention through :func:`grouped_query_attention` (registered with
    transformers' ``AttentionInterface``); restore each config's implementation on exit. Yields the
    number of configs switched."""
    from transformers import AttentionInterface

    AttentionInterface.register(GROUPED_ATTENTION, grouped_query_attention)
    configs = {id(m.config): m.config for m in model.modules() if type(m).__name__ == "GraniteAttention"}
    before = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = GROUPED_ATTENTION
        yield len(configs)
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


def subsampling_block_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_embeddings=None,
    **kwargs,
) -> torch.Tensor:
    """``GraniteSpeech5EncoderSubsamplingBlock.forward`` (5.0 CTC) with its frame-pair mean pooling as a
    reshape: the TorchScript exporter has no ``unfold``. ``x.unfold(1, 2, 2).mean(-1)`` is
    ``x[:, :2 * (T // 2)].reshape(B, T // 2, 2, C).mean(2)``: the same pairs, an odd last frame dropped."""
    residual = hidden_states
    hidden_states = residual + 0.5 * self.feed_forward1(self.norm_feed_forward1(hidden_states))
    attn_output, _ = self.self_attn(
        hidden_states=self.norm_self_att(hidden_states),
        attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    hidden_states = hidden_states + attn_output
    conv_output = self.conv(self.norm_conv(hidden_states), attention_mask=attention_mask)
    batch, frames, channels = hidden_states.shape
    pairs = frames // 2
    pooled = hidden_states[:, : 2 * pairs].reshape(batch, pairs, 2, channels).mean(2)
    hidden_states = pooled + conv_output[:, :pairs]
    hidden_states = hidden_states + 0.5 * self.feed_forward2(self.norm_feed_forward2(hidden_states))
    return self.norm_out(hidden_states)


def ctc_conv_module_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """``GraniteSpeech5EncoderConvolutionModule.forward`` with its BatchNorm folded into the depthwise
    convolution beforehand, in float64 (:func:`fold_batch_norm`), for the same CPU-independent bytes."""
    hidden_states = F.glu(self.pointwise_lin1(hidden_states), dim=-1)
    if attention_mask is not None:
        hidden_states = hidden_states.masked_fill(~attention_mask.unsqueeze(-1), 0.0)
    conv = self.depthwise_conv
    hidden_states = F.conv1d(
        hidden_states.transpose(1, 2),
        getattr(self, FOLDED_WEIGHT),
        getattr(self, FOLDED_BIAS),
        stride=conv.stride,
        padding=conv.padding,
        groups=conv.groups,
    )
    return self.pointwise_lin2(F.silu(hidden_states).transpose(1, 2))


PATCHES = (conformer_attention_forward, projector_forward, conv_module_forward)
CTC_PATCHES = (subsampling_block_forward, ctc_conv_module_forward)


def class_prefix(model: nn.Module) -> str:
    """The encoder classes' prefix of ``model``'s registry entry (4.1-2b-plus renames every one of them)."""
    from ..registry import ENTRIES

    kind = type(model).__name__
    entry = next((e for e in ENTRIES if e.model_class == kind), None)
    if entry is None:
        raise TypeError(f"{kind} is not the reference class of any registry entry")
    return entry.class_prefix


def _patch_set(model: nn.Module) -> tuple:
    return CTC_PATCHES if class_prefix(model) == "GraniteSpeech5" else PATCHES


def _folding(module: nn.Module) -> tuple[nn.Conv1d, nn.BatchNorm1d] | None:
    """The (depthwise conv, BatchNorm) pair a patched conv module folds, else None."""
    if hasattr(module, "depthwise_conv"):  # 5.0 CTC
        return module.depthwise_conv, module.norm
    if hasattr(module, "depth_conv"):
        return module.depth_conv.conv, module.batch_norm
    return None


def _targets(model: nn.Module) -> Iterator[tuple[nn.Module, object]]:
    prefix = class_prefix(model)
    if _patch_set(model) is CTC_PATCHES:
        for module in model.modules():
            kind = type(module).__name__
            if kind == f"{prefix}EncoderSubsamplingBlock":
                yield module, subsampling_block_forward
            elif kind == f"{prefix}EncoderConvolutionModule" and not module.norm.training:
                yield module, ctc_conv_module_forward
        return
    for module in model.modules():
        kind = type(module).__name__
        if kind == f"{prefix}ConformerAttention":
            yield module, conformer_attention_forward
        elif kind == f"{prefix}EncoderProjector":
            yield module, projector_forward
        elif kind == f"{prefix}ConformerConvModule" and not module.batch_norm.training:
            yield module, conv_module_forward


@contextlib.contextmanager
def dynamic_length_patches(model: nn.Module) -> Iterator[int]:
    """Bind the length-safe forwards to every matching submodule; restore them on exit.

    Yields the number of modules patched, so callers can assert the patch found its targets
    (a renamed upstream class would otherwise make it a silent no-op).
    """
    patched = []
    targets = list(_targets(model))
    missing = [f.__name__ for f in _patch_set(model) if not any(fn is f for _, fn in targets)]
    if missing:  # a renamed upstream class would make that patch a silent no-op
        raise RuntimeError(
            f"the export patches {', '.join(missing)} matched no module of {type(model).__name__} "
            f"(classes prefixed {class_prefix(model)}); unsupported transformers version?"
        )
    try:
        for module, fn in targets:
            if fn in (conv_module_forward, ctc_conv_module_forward):
                weight, bias = fold_batch_norm(*_folding(module))
                module.register_buffer(FOLDED_WEIGHT, weight, persistent=False)
                module.register_buffer(FOLDED_BIAS, bias, persistent=False)
            module.forward = types.MethodType(fn, module)
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
            for name in (FOLDED_WEIGHT, FOLDED_BIAS):
                module._buffers.pop(name, None)
