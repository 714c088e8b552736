"""Each exported graph reproduces transformers' PyTorch model, at lengths that tracing gets wrong.

References are the unpatched upstream modules (not the export wrappers), so these tests also prove
the length patches and the audio merge. Tolerance: float32 reassociation between onnxruntime and
torch kernels, max |diff| <= 1e-4 * (1 + max |reference|); measured errors are ~1e-5 on logits of
magnitude ~10, ~1e-6 on embeddings.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from granite_onnx.specs import ModelDims, audio_tokens_for_frames, past_name

RTOL = 1e-4


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = float(np.max(np.abs(got - want)))
    assert err <= RTOL * (1 + float(np.max(np.abs(want)))), f"{what}: max |onnx - torch| = {err}"
    return err


@pytest.fixture(scope="module")
def sessions(tiny_bundle):
    return {
        name: ort.InferenceSession(str(tiny_bundle / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for name in ("encoder", "prompt_encode", "decode_step")
    }


@pytest.fixture(scope="module")
def dims(tiny_model) -> ModelDims:
    return ModelDims.from_config(tiny_model.config.to_dict())


def _features(batch: int, frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, 160)).astype(np.float32)


@torch.no_grad()
def _upstream_audio_embeds(model, features: np.ndarray) -> np.ndarray:
    return model.get_audio_features(torch.from_numpy(features), return_dict=True).pooler_output.numpy()


# 10 frames: shorter than one 15-frame projector window; 200 and 1000: exact multiples of the
# 200-frame attention block (the classic traced-length bug); 347: a partial block.
@pytest.mark.parametrize(("batch", "frames"), [(1, 10), (1, 200), (1, 1000), (1, 347), (2, 347), (2, 200)])
def test_encoder_matches_pytorch_at_lengths_tracing_gets_wrong(sessions, tiny_model, batch, frames):
    features = _features(batch, frames, seed=frames)
    got = sessions["encoder"].run(None, {"input_features": features})[0]
    want = _upstream_audio_embeds(tiny_model, features)
    assert got.shape == (batch, audio_tokens_for_frames(frames), tiny_model.config.text_config.hidden_size)
    assert_close(got, want, f"encoder at {frames} frames")


def test_length_patches_restore_the_model(tiny_model):
    from granite_onnx.export.patches import FOLDED_BIAS, FOLDED_WEIGHT, dynamic_length_patches

    buffers = {n for n, _ in tiny_model.named_buffers()}
    with dynamic_length_patches(tiny_model) as patched:
        # attention and conv module of every block, and the projector
        assert patched == 2 * tiny_model.config.encoder_config.num_layers + 1
    assert all("forward" not in vars(m) for m in tiny_model.modules())
    assert {n for n, _ in tiny_model.named_buffers()} == buffers
    assert not any(FOLDED_WEIGHT in n or FOLDED_BIAS in n for n in buffers)


def test_the_batch_norm_fold_is_float64_exact_and_matches_upstream(tiny_model):
    """The folded conv computes what upstream's depthwise conv + BatchNorm compute (to float32 rounding),
    and its weights are the float64 fold rounded once: the same bytes on every CPU."""
    from granite_onnx.export.patches import dynamic_length_patches, fold_batch_norm

    module = next(m for m in tiny_model.modules() if type(m).__name__ == "GraniteSpeechConformerConvModule")
    x = torch.randn(
        2, 37, tiny_model.config.encoder_config.hidden_dim, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        want = module(x)
        with dynamic_length_patches(tiny_model):
            got = module(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    weight, bias = fold_batch_norm(module.depth_conv.conv, module.batch_norm)
    norm = module.batch_norm
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    expected = (module.depth_conv.conv.weight.double() * scale[:, None, None]).float()
    assert torch.equal(weight, expected) and weight.dtype == bias.dtype == torch.float32


def _prompt(dims: ModelDims, batch: int, audio_tokens: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = lambda n: rng.integers(4, dims.audio_token_id, (batch, n))  # noqa: E731
    audio = np.full((batch, audio_tokens), dims.audio_token_id)
    return np.concatenate([text(6), audio, text(9)], axis=1).astype(np.int64)


@torch.no_grad()
def _upstream_prompt(model, input_ids: np.ndarray, features: np.ndarray):
    ids = torch.from_numpy(input_ids)
    out = model(
        input_ids=ids,
        input_features=torch.from_numpy(features),
        attention_mask=torch.ones_like(ids),
        use_cache=True,
    )
    return out.logits[:, -1].numpy(), out.past_key_values


def _onnx_prompt(sessions, input_ids: np.ndarray, embeds: np.ndarray) -> list[np.ndarray]:
    batch, seq = input_ids.shape
    return sessions["prompt_encode"].run(
        None,
        {
            "input_ids": input_ids,
            "audio_embeds": embeds,
            "attention_mask": np.ones((batch, seq), np.int64),
            "position_ids": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
        },
    )


@pytest.mark.parametrize(("batch", "frames"), [(1, 45), (1, 347), (2, 200)])
def test_prompt_encode_matches_pytorch_logits_and_kv(sessions, tiny_model, dims, batch, frames):
    features = _features(batch, frames, seed=7)
    embeds = sessions["encoder"].run(None, {"input_features": features})[0]
    input_ids = _prompt(dims, batch, embeds.shape[1], seed=frames)
    logits, *kv = _onnx_prompt(sessions, input_ids, embeds)
    want_logits, cache = _upstream_prompt(tiny_model, input_ids, features)
    assert_close(logits, want_logits, "prompt logits")
    assert (logits.argmax(-1) == want_logits.argmax(-1)).all()
    for i, layer in enumerate(cache.layers):
        assert kv[2 * i].shape == (
            batch,
            dims.kv_heads,
            input_ids.shape[1],
            dims.head_dim,
        )  # GQA heads un-expanded
        assert_close(kv[2 * i], layer.keys.numpy(), f"layer {i} key")
        assert_close(kv[2 * i + 1], layer.values.numpy(), f"layer {i} value")


@pytest.mark.parametrize("frames", [45, 430])
def test_decode_step_matches_pytorch_at_two_lengths(sessions, tiny_model, dims, frames):
    """Three teacher-forced steps after prompts of two lengths: logits and the grown KV agree."""
    features = _features(1, frames, seed=3)
    embeds = sessions["encoder"].run(None, {"input_features": features})[0]
    input_ids = _prompt(dims, 1, embeds.shape[1], seed=11)
    logits, *kv = _onnx_prompt(sessions, input_ids, embeds)
    want_logits, cache = _upstream_prompt(tiny_model, input_ids, features)
    total = input_ids.shape[1]
    for token in (int(want_logits.argmax()), 17, 42):
        feeds = {
            "input_ids": np.array([[token]]),
            "attention_mask": np.ones((1, total + 1), np.int64),
            "position_ids": np.array([[total]]),
        }
        feeds.update(
            {
                past_name(i, k): kv[2 * i + j]
                for i in range(dims.num_layers)
                for j, k in enumerate(("key", "value"))
            }
        )
        logits, *kv = sessions["decode_step"].run(None, feeds)
        with torch.no_grad():
            out = tiny_model(
                input_ids=torch.tensor([[token]]),
                attention_mask=torch.ones(1, total + 1, dtype=torch.long),
                past_key_values=cache,
                use_cache=True,
            )
        cache = out.past_key_values
        total += 1
        assert_close(logits, out.logits[:, -1].numpy(), f"decode logits at {total}")
        assert kv[0].shape == (1, dims.kv_heads, total, dims.head_dim)
        assert_close(kv[-1], cache.layers[-1].values.numpy(), "last layer value")


def test_logits_are_not_divided_by_logits_scaling(sessions, tiny_model, dims):
    """The graph returns what GraniteSpeechForConditionalGeneration returns (no / logits_scaling)."""
    assert tiny_model.config.text_config.logits_scaling != 1
    features = _features(1, 60, seed=5)
    embeds = sessions["encoder"].run(None, {"input_features": features})[0]
    input_ids = _prompt(dims, 1, embeds.shape[1], seed=5)
    logits = _onnx_prompt(sessions, input_ids, embeds)[0]
    want, _ = _upstream_prompt(tiny_model, input_ids, features)
    scaled = want / tiny_model.config.text_config.logits_scaling
    assert_close(logits, want, "logits")
    assert np.max(np.abs(logits - scaled)) > 100 * np.max(np.abs(logits - want))


@pytest.mark.parametrize("q_len", [1, 7])
def test_grouped_attention_is_transformers_eager_attention(tiny_model, q_len):
    """The export's attention reads the KV cache without repeat_kv; it must be upstream's eager maths."""
    from transformers.models.granite.modeling_granite import eager_attention_forward

    from granite_onnx.export.patches import grouped_query_attention

    module = next(m for m in tiny_model.modules() if type(m).__name__ == "GraniteAttention")
    heads, kv_heads = module.config.num_attention_heads, module.config.num_key_value_heads
    assert heads > kv_heads, "the tiny model must have grouped KV heads to test this"
    gen = torch.Generator().manual_seed(0)
    past, dim = 5, module.head_dim
    query = torch.randn(2, heads, q_len, dim, generator=gen)
    key = torch.randn(2, kv_heads, past + q_len, dim, generator=gen)
    value = torch.randn(2, kv_heads, past + q_len, dim, generator=gen)
    mask = torch.where(torch.rand(2, 1, q_len, past + q_len, generator=gen) < 0.3, -1e9, 0.0)
    want, want_weights = eager_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, got_weights = grouped_query_attention(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_weights, want_weights, rtol=1e-5, atol=1e-6)


def test_grouped_attention_restores_the_config(tiny_model):
    from granite_onnx.export.patches import GROUPED_ATTENTION, grouped_attention

    config = tiny_model.model.language_model.config
    before = config._attn_implementation
    with grouped_attention(tiny_model) as switched:
        assert switched >= 1 and config._attn_implementation == GROUPED_ATTENTION
    assert config._attn_implementation == before


def test_relative_position_scores_are_the_einsum():
    from granite_onnx.export.patches import relative_position_scores

    gen = torch.Generator().manual_seed(1)
    query, rel = torch.randn(3, 4, 6, 8, generator=gen), torch.randn(6, 6, 8, generator=gen)
    want = torch.einsum("b h c d, c r d -> b h c r", query, rel)
    torch.testing.assert_close(relative_position_scores(query, rel), want, rtol=1e-5, atol=1e-5)
