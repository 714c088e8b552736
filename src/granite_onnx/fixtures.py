"""The built-in tiny Granite Speech checkpoint (``--model tiny``).

Tests, CI and a first-time user need a real ``GraniteSpeechForConditionalGeneration`` folder without
a 9 GB download. This module writes one from a seed: the same architecture as Granite Speech 4.1
(conformer encoder, Q-Former projector, Granite LLM, untied head, no LoRA) at toy sizes, with a
byte-level BPE tokenizer whose ``<|audio|>`` token is the last id, like the real model's.

The folder is byte-identical for a given :class:`TinySpec`, package and library versions, so it can be
cached, hashed and compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from granite_onnx import __version__
from granite_onnx.staging import make_temp_dir, sweep_stale

# Bumped when the files a spec writes change without the spec changing (2: tiny-lora's adapter_config.json no
# longer records peft's temporary save folder), so no cache keeps the old bytes.
FIXTURE_FORMAT = 2
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
START_OF_ROLE = "<|start_of_role|>"
END_OF_ROLE = "<|end_of_role|>"
AUDIO_TOKEN = "<|audio|>"
PROCESSOR_CLASS = "GraniteSpeechProcessor"
# Trained first, so they take ids 0..3; <|audio|> is added after training so it is the last id.
LEADING_SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN, START_OF_ROLE, END_OF_ROLE)

# Granite-style chat template: one role block per message, then the assistant header on request.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content']"
    " + '<|end_of_text|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)

# Reference transcripts of the parity clips (copied from shared/clips/manifest.json so the package does not
# depend on that folder): training on them keeps their token counts realistic.
CLIP_TRANSCRIPTS = (
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your "
    "country.",
    "HE BEGAN A CONFUSED COMPLAINT AGAINST THE WIZARD WHO HAD VANISHED BEHIND THE CURTAIN ON THE LEFT",
    "this is the acoustic corpus i'm talking pretty fast here there's nothing going else going on we're just "
    "yknow there's some speech errors but who cares um this is me talking really slow and slightly lower in "
    "intensity uh we're just saying some words and here's some more words words words words um and that "
    "should be all thanks",
    "um this is me talking really slow and slightly lower in intensity uh we're just saying some words and "
    "here's some more words words words words um and that should be all thanks uh so this is the sick corpus "
    "uh i have a cold so i probably sound quite different than the uh uh acoustic corpus um the recording "
    "environment is also quite different and i'm saying a bunch of different words that i did not say in the "
    "original one uh and here's a long pause and i think this is probably good alright thanks",
    "Congratulations. You have successfully installed and executed the Asterisk open source PBX. You have "
    "also installed a set of sample sounds and configuration files that should help you to get started. Like "
    "a normal PBX you will navigate this demonstration by dialing digits. If you are using a console channel "
    "driver instead of a real phone you can use the dial, answer, and hang up commands to simulate the "
    "actions of a standard telephone.",
)

# Prompt words and plain English, so prompts and common words become a few tokens each.
PROMPT_TEXT = (
    "can you transcribe the speech into a written format?",
    "Transcribe the audio. Translate the speech into English. You are Granite, developed by IBM. "
    "You are a helpful AI assistant. Knowledge Cutoff Date: April 2024. Today's Date: April 9, 2025.",
    "system user assistant",
)
ENGLISH_TEXT = (
    "The morning train was late again, so she walked along the river to the old market. The stalls were "
    "opening one by one: bread, fish, apples, flowers and a man who sold nothing but keys. She bought two "
    "apples and a small loaf, then sat on the stone steps to watch the boats go by.",
    "A speech recogniser listens to sound and writes down the words it hears. It must cope with noise, "
    "with people who speak quickly or slowly, and with voices it has never heard before. The numbers one, "
    "two, three, four, five, six, seven, eight, nine and ten are easy; names and places are harder.",
    "Please call me back when you get this message. I will be at home after six o'clock this evening, and "
    "tomorrow I am free all day. If nobody answers, leave a short note and I will reply as soon as I can.",
    "The weather today is cold and windy in the north, with rain later in the afternoon. In the south it "
    "will be dry and bright, and the temperature will rise during the week. Drivers should take care on "
    "the roads near the coast tonight.",
    "We measured every graph twice, first on the computer and then on the small board, and wrote each "
    "result in the table. The model is small, but it has the same shape as the large one, so the same "
    "code runs on both. Thank you for listening, and good night.",
)
TRAINING_CORPUS = CLIP_TRANSCRIPTS + PROMPT_TEXT + ENGLISH_TEXT


@dataclass(frozen=True)
class TinySpec:
    """Every number that shapes the tiny checkpoint; its hash names the cache folder."""

    seed: int = 0
    # The registry entry (model_type) the checkpoint belongs to: granite_speech, or granite_speech_plus,
    # whose encoder also hands the outputs of ``cat_hidden_layers`` (0 = input_linear, k = block k) to the
    # projector. With 2 layers the default (1,) is block 1 = num_layers // 2, where the self-conditioning adds
    # in place into the very tensor that was kept: the case an export must not alias away.
    family: str = "granite_speech"
    cat_hidden_layers: tuple[int, ...] = (1,)
    # A 3.3-style LoRA adapter (adapter_config.json + adapter_model.safetensors beside the base) when > 0.
    lora_rank: int = 0
    lora_alpha: float = 2.0
    lora_b_std: float = 0.5
    # transformers initialises Linear weights with std 0.02: attention is then uniform, the prompt's
    # last position sees only the mean of the audio, and every clip decodes to the same text. Each
    # Linear weight is redrawn with std weight_gain / sqrt(fan_in) and the LLM embeddings with std 1,
    # so the transcript depends on the audio (a broken encoder or merge changes it).
    weight_gain: float = 1.5
    # The same for the Granite LLM's Linear weights alone (None: weight_gain). The encoder keeps weight_gain:
    # larger encoder weights grow the activations through the conformer until float32 rounding alone moves
    # the audio embeddings past the export gate (measured: 3.0 over 4 layers gave 2e-3).
    text_weight_gain: float | None = None
    # Multiplies lm_head.weight after that: random weights give a near-flat softmax, and greedy
    # decoding then flips on rounding noise; a larger head gives a clear top-1/top-2 logit margin.
    lm_head_gain: float = 8.0
    # CTC only (see TINY_CTC)
    ctc_input_level: float = 0.5
    ctc_mid_gain: float = 0.1
    ctc_blank_bias: float = 16.0
    # tokenizer (the text vocab is this plus <|audio|>)
    bpe_vocab_size: int = 767
    # conformer encoder
    encoder_input_dim: int = 160  # two stacked 80-bin log-mel frames: fixed by the feature extractor
    encoder_num_layers: int = 2
    encoder_hidden_dim: int = 32
    encoder_num_heads: int = 2
    encoder_dim_head: int = 16
    encoder_output_dim: int = 16
    encoder_context_size: int = 200
    encoder_max_pos_emb: int = 512
    encoder_conv_kernel_size: int = 15
    encoder_feedforward_mult: int = 4
    encoder_conv_expansion_factor: int = 2
    # Q-Former projector
    projector_hidden_size: int = 32
    projector_num_layers: int = 1
    projector_num_heads: int = 2
    projector_intermediate_size: int = 64
    # Granite LLM
    text_hidden_size: int = 64
    text_num_layers: int = 2
    text_num_heads: int = 4
    text_num_kv_heads: int = 2
    text_intermediate_size: int = 128
    text_max_position_embeddings: int = 4096
    text_embedding_multiplier: float = 12.0
    text_residual_multiplier: float = 0.22
    text_logits_scaling: float = 8.0
    text_rms_norm_eps: float = 1e-5
    text_rope_theta: float = 10000.0
    # audio -> token rate, as in the real model
    window_size: int = 15
    downsample_rate: int = 5

    @property
    def vocab_size(self) -> int:
        """Text vocabulary size: the trained BPE vocabulary plus the trailing ``<|audio|>`` token (a CTC
        checkpoint has no audio token: its vocabulary is the BPE's, blank first)."""
        return self.bpe_vocab_size + (0 if self.family == CTC_FAMILY else 1)

    @property
    def audio_token_index(self) -> int:
        """``<|audio|>`` is the last id, as in the real checkpoint (100352 of 100353)."""
        return self.vocab_size - 1

    def short_hash(self) -> str:
        """12 hex digits over the spec and the package version: a new release rebuilds the cache."""
        payload = {"spec": dataclasses.asdict(self), "version": __version__, "format": FIXTURE_FORMAT}
        payload = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# The tiny 4.1-2b-plus checkpoint. Its head is tied to the embeddings, and with the defaults above every step
# repeats the last token (the input embedding dominates the residual stream and the tied head reads it back:
# measured, the same id 30 times at a margin of 51). Smaller embeddings, full residual updates and larger
# LLM weights let the audio decide: on jfk, the stereo clip and librispeech 21, 7 and 23 distinct ids in 30
# greedy steps, median top-1/top-2 margin 1.6-2.4, so FP32 decoding equal to generate means something. The
# price: INT8 error on these weights flips steps with margins up to 0.92, above the near-tie limit (0.41, the
# 10th percentile of its margins), so `make all MODEL=tiny-plus` reports the INT8 tiers without a gate; they
# are gated on the tiny and trained granite_speech checkpoints. Settings whose INT8 tiers passed the near-tie
# gate gave one or two distinct ids per clip.
TINY_PLUS = TinySpec(
    family="granite_speech_plus",
    text_weight_gain=3.0,
    text_residual_multiplier=1.0,
    text_embedding_multiplier=0.1,
)


# The tiny granite_speech with a 3.3-style LoRA adapter on the LLM's q_proj and v_proj, alpha / r = 0.5 as in
# 3.3 (r 64, alpha 32). peft starts lora_B at zero, which would make the merge a no-op: it is redrawn, large
# enough that the adapter changes the transcript (a reference that lost its adapter must fail parity):
# measured, with lora_B std 0.5 the first-step logits moved by 0.2 and 30 greedy tokens did not change; with
# 2.0 jfk and librispeech leave the base model's tokens at steps 4 and 6.
TINY_LORA = TinySpec(lora_rank=4, lora_alpha=2.0, lora_b_std=2.0)

# The tiny granite-speech-5.0 CTC checkpoint: GraniteSpeech5ForCTC with 4 conformer blocks (the first two
# subsample, the self-conditioning head after block 2), attention blocks of 16 frames (the trace at 430 frames
# pads every layer's last block; 64 frames pads none), kernel 7 as 5.0. Its vocabulary is a byte-level BPE
# with the blank <|blank|> at id 0. The tied head (encoder.out = ctc_head) is scaled by lm_head_gain for a
# clear frame argmax margin; the BatchNorm statistics are redrawn so the export's folding is not an identity.
# With random weights alone every frame of every clip gave the same token (measured: ' wit' on jfk,
# librispeech and the stereo clip): the log-mel's level (about 0.5 in every bin) reaches the encoder as one
# constant vector per frame, and the sharp self-conditioning head adds another. So input_linear's bias
# cancels a level of ctc_input_level, out_mid is scaled by ctc_mid_gain and the blank gets ctc_blank_bias:
# measured on jfk, librispeech, the stereo clip and asterisk, 21/21/67/28 ids after collapsing (5-15
# distinct), 0-46 % blank frames, 10th-percentile top-1/top-2 frame margin 0.15-0.52.
CTC_FAMILY = "granite_speech5_ctc"
BLANK_TOKEN = "<|blank|>"
TINY_CTC = TinySpec(
    family=CTC_FAMILY,
    bpe_vocab_size=384,
    encoder_num_layers=4,
    encoder_context_size=16,
    encoder_max_pos_emb=64,
    encoder_conv_kernel_size=7,
    lm_head_gain=6.0,
)


def fixture_spec(name: str) -> TinySpec:
    """The TinySpec of ``--model name`` (registry.FIXTURES: tiny, tiny-plus, tiny-lora, tiny-ctc)."""
    return {"tiny-plus": TINY_PLUS, "tiny-lora": TINY_LORA, "tiny-ctc": TINY_CTC}.get(name, TinySpec())


def build_tokenizer(spec: TinySpec = TinySpec(), corpus: tuple[str, ...] = TRAINING_CORPUS):
    """Train the byte-level BPE on ``corpus`` and wrap it as a transformers fast tokenizer.

    Training is deterministic for a fixed corpus and vocabulary size (checked by the fixture tests).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.bpe_vocab_size,
        special_tokens=list(LEADING_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if bpe.get_vocab_size() != spec.bpe_vocab_size:
        raise ValueError(
            f"the built-in corpus yields {bpe.get_vocab_size()} BPE tokens, not {spec.bpe_vocab_size}: "
            "lower TinySpec.bpe_vocab_size"
        )
    bpe.add_special_tokens([AddedToken(AUDIO_TOKEN, special=True, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.text_max_position_embeddings,
    )


def build_ctc_tokenizer(spec: TinySpec, corpus: tuple[str, ...] = TRAINING_CORPUS):
    """The CTC checkpoint's tokenizer: byte-level BPE, ``<|blank|>`` (blank = pad) at id 0, no chat
    template, wrapped as transformers' ``ParakeetTokenizer`` (what 5.0's tokenizer_config.json names)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import ParakeetTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.bpe_vocab_size,
        special_tokens=[BLANK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if bpe.get_vocab_size() != spec.bpe_vocab_size:
        raise ValueError(
            f"the built-in corpus yields {bpe.get_vocab_size()} BPE tokens, not {spec.bpe_vocab_size}"
        )
    return ParakeetTokenizer(tokenizer_object=bpe, pad_token=BLANK_TOKEN, model_max_length=1_000_000)


def build_ctc_config(spec: TinySpec):
    """``GraniteSpeech5CTCConfig`` of 5.0's layout (subsample_layers [0, 1], tied head, blank 0) at toy
    sizes."""
    from transformers import GraniteSpeech5CTCConfig

    encoder = {
        "num_hidden_layers": spec.encoder_num_layers,
        "hidden_size": spec.encoder_hidden_dim,
        "num_attention_heads": spec.encoder_num_heads,
        "num_key_value_heads": spec.encoder_num_heads,
        "head_dim": spec.encoder_dim_head,
        "intermediate_size": spec.encoder_hidden_dim * spec.encoder_feedforward_mult,
        "conv_kernel_size": spec.encoder_conv_kernel_size,
        "conv_expansion_factor": spec.encoder_conv_expansion_factor,
        "context_size": spec.encoder_context_size,
        "max_position_embeddings": spec.encoder_max_pos_emb,
        "subsample_layers": [0, 1],
        "vocab_size": spec.vocab_size,
    }
    return GraniteSpeech5CTCConfig(encoder_config=encoder, vocab_size=spec.vocab_size, pad_token_id=0)


def build_ctc_model(spec: TinySpec, config):
    """Seeded float32 ``GraniteSpeech5ForCTC``: Linear weights redrawn as :func:`build_model` does, BatchNorm
    statistics redrawn, the tied CTC head scaled by ``spec.lm_head_gain``."""
    import torch
    from transformers import GraniteSpeech5ForCTC

    torch.manual_seed(spec.seed)
    model = GraniteSpeech5ForCTC(config).to(torch.float32).eval()
    generator = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                std = spec.weight_gain / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            elif isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
        model.ctc_head.weight.mul_(spec.lm_head_gain)  # = encoder.out.weight (tied)
        level = torch.zeros(model.encoder.input_linear.in_features)
        mels = config.encoder_config.num_mel_bins
        level[:mels] = level[2 * mels : 3 * mels] = spec.ctc_input_level  # the two mel parts, not the deltas
        linear = model.encoder.input_linear
        linear.bias.copy_(-linear.weight @ level)
        model.encoder.out_mid.weight.mul_(spec.ctc_mid_gain)
        model.ctc_head.bias[0] += spec.ctc_blank_bias
    return model


def ctc_preprocessor_config() -> dict[str, Any]:
    """``GraniteSpeech5FeatureExtractor().to_dict()`` + processor_class, spelled out (it needs torchaudio)."""
    return {
        "delta_win_length": 3,
        "feature_extractor_type": "GraniteSpeech5FeatureExtractor",
        "feature_size": 320,
        "hop_length": 160,
        "logmel_floor_db": 8.0,
        "n_fft": 512,
        "num_mel_bins": 80,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "GraniteSpeech5Processor",
        "return_attention_mask": True,
        "sampling_rate": 16000,
        "win_length": 400,
    }


def _write_ctc_checkpoint_files(folder: Path, spec: TinySpec) -> None:
    tokenizer = build_ctc_tokenizer(spec)
    if tokenizer.pad_token_id != 0 or len(tokenizer) != spec.vocab_size:
        raise AssertionError(f"tokenizer has {len(tokenizer)} ids and blank={tokenizer.pad_token_id}")
    model = build_ctc_model(spec, build_ctc_config(spec))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer._set_processor_class("GraniteSpeech5Processor")
    tokenizer.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", ctc_preprocessor_config())


def build_config(spec: TinySpec, token_ids: dict[str, int]):
    """The ``GraniteSpeechConfig``: 4.1-2b's layout (no LoRA, untied head) at toy sizes; for the plus
    family a ``GraniteSpeechPlusConfig`` (4.1-2b-plus: concatenated encoder layers, tied head)."""
    from transformers import GraniteSpeechConfig, GraniteSpeechPlusConfig

    plus = spec.family == "granite_speech_plus"
    if spec.family not in ("granite_speech", "granite_speech_plus"):
        raise ValueError(f"no tiny checkpoint for the {spec.family!r} family")
    concatenated = len(spec.cat_hidden_layers) + 1 if plus else 1
    config_class = GraniteSpeechPlusConfig if plus else GraniteSpeechConfig
    plus_encoder = {"cat_hidden_layers": list(spec.cat_hidden_layers)} if plus else {}

    head_dim = spec.text_hidden_size // spec.text_num_heads
    special = {
        "bos_token_id": token_ids[EOS_TOKEN],
        "eos_token_id": token_ids[EOS_TOKEN],
        "pad_token_id": token_ids[PAD_TOKEN],
    }
    return config_class(
        encoder_config={
            **plus_encoder,
            "model_type": "granite_speech_plus_encoder" if plus else "granite_speech_encoder",
            "input_dim": spec.encoder_input_dim,
            "num_layers": spec.encoder_num_layers,
            "hidden_dim": spec.encoder_hidden_dim,
            "feedforward_mult": spec.encoder_feedforward_mult,
            "num_heads": spec.encoder_num_heads,
            "dim_head": spec.encoder_dim_head,
            "output_dim": spec.encoder_output_dim,
            "context_size": spec.encoder_context_size,
            "max_pos_emb": spec.encoder_max_pos_emb,
            "conv_kernel_size": spec.encoder_conv_kernel_size,
            "conv_expansion_factor": spec.encoder_conv_expansion_factor,
        },
        projector_config={
            "model_type": "blip_2_qformer",
            "hidden_size": spec.projector_hidden_size,
            "num_hidden_layers": spec.projector_num_layers,
            "num_attention_heads": spec.projector_num_heads,
            "intermediate_size": spec.projector_intermediate_size,
            "encoder_hidden_size": spec.encoder_hidden_dim * concatenated,
            "cross_attention_frequency": 1,
            "use_qformer_text_input": False,
        },
        text_config={
            "model_type": "granite",
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.text_hidden_size,
            "num_hidden_layers": spec.text_num_layers,
            "num_attention_heads": spec.text_num_heads,
            "num_key_value_heads": spec.text_num_kv_heads,
            "intermediate_size": spec.text_intermediate_size,
            "max_position_embeddings": spec.text_max_position_embeddings,
            "rms_norm_eps": spec.text_rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": spec.text_rope_theta},
            "embedding_multiplier": spec.text_embedding_multiplier,
            "attention_multiplier": 1.0 / head_dim,
            "residual_multiplier": spec.text_residual_multiplier,
            "logits_scaling": spec.text_logits_scaling,
            "tie_word_embeddings": plus,
            **special,
        },
        audio_token_index=token_ids[AUDIO_TOKEN],
        has_lora_adapter=False,
        downsample_rate=spec.downsample_rate,
        window_size=spec.window_size,
        tie_word_embeddings=plus,
    )


def build_model(spec: TinySpec, config):
    """Seeded float32 model, with the head scaled by ``spec.lm_head_gain`` for a clear greedy margin."""
    import torch
    import transformers

    from .registry import entry_named

    torch.manual_seed(spec.seed)
    model_class = getattr(transformers, entry_named(spec.family).model_class)
    model = model_class(config).to(torch.float32).eval()
    generator = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                text = "language_model" in name and spec.text_weight_gain is not None
                std = (spec.text_weight_gain if text else spec.weight_gain) / module.in_features**0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
            elif isinstance(module, torch.nn.Embedding) and "language_model" in name:
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        model.lm_head.weight.mul_(spec.lm_head_gain)
    text = config.text_config
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    return model


def feature_extractor_config(spec: TinySpec) -> dict[str, Any]:
    """``GraniteSpeechFeatureExtractor().to_dict()`` under transformers 5.23, written out by hand.

    The extractor cannot be built here (it needs torchaudio, which has no build for this torch), so its
    dict is spelled out; the STFT settings live in ``melspec_kwargs`` exactly as transformers nests them.
    """
    return {
        "feature_extractor_type": "GraniteSpeechFeatureExtractor",
        "feature_size": 80,
        "melspec_kwargs": {
            "hop_length": 160,
            "n_fft": 512,
            "n_mels": 80,
            "sample_rate": 16000,
            "win_length": 400,
        },
        "padding_side": "right",
        "padding_value": 0.0,
        "projector_downsample_rate": spec.downsample_rate,
        "projector_window_size": spec.window_size,
        "return_attention_mask": True,
        "sampling_rate": 16000,
    }


def preprocessor_config(spec: TinySpec) -> dict[str, Any]:
    """``preprocessor_config.json`` as real checkpoints ship it: the extractor's dict + processor_class."""
    return {**feature_extractor_config(spec), "processor_class": PROCESSOR_CLASS}


def processor_config(spec: TinySpec) -> dict[str, Any]:
    """``processor_config.json`` as ``GraniteSpeechProcessor.save_pretrained`` writes it in 5.23."""
    return {
        "audio_processor": feature_extractor_config(spec),
        "audio_token": AUDIO_TOKEN,
        "processor_class": PROCESSOR_CLASS,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON as transformers writes it: 2-space indent, sorted keys, trailing newline."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_checkpoint_files(folder: Path, spec: TinySpec) -> None:
    """Write every file of the checkpoint into an existing empty folder."""
    if spec.family == CTC_FAMILY:
        return _write_ctc_checkpoint_files(folder, spec)
    tokenizer = build_tokenizer(spec)
    token_ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*LEADING_SPECIAL_TOKENS, AUDIO_TOKEN)}
    if token_ids[AUDIO_TOKEN] != spec.audio_token_index or len(tokenizer) != spec.vocab_size:
        raise AssertionError(f"tokenizer has {len(tokenizer)} ids and <|audio|>={token_ids[AUDIO_TOKEN]}")
    config = build_config(spec, token_ids)
    if spec.lora_rank:
        config.has_lora_adapter = True  # as 3.3's config says
    model = build_model(spec, config)
    model.save_pretrained(folder, safe_serialization=True)
    if spec.lora_rank:  # after the base: saving a model with an adapter attached writes a broken base
        _write_adapter(model, folder, spec)
    tokenizer._set_processor_class(PROCESSOR_CLASS)  # what the processor's save_pretrained records
    tokenizer.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", preprocessor_config(spec))
    _write_json(folder / "processor_config.json", processor_config(spec))


def _write_adapter(model, folder: Path, spec: TinySpec) -> None:
    """Attach a LoRA adapter with peft, redraw its lora_B (peft starts it at zero, a no-op merge), and write
    only its two files into ``folder``, as 3.3 checkpoints ship them."""
    import tempfile

    import torch
    from peft import LoraConfig

    model.add_adapter(
        LoraConfig(
            r=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
        )
    )
    generator = torch.Generator().manual_seed(spec.seed + 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * spec.lora_b_std)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copyfile(Path(tmp) / "adapter_model.safetensors", folder / "adapter_model.safetensors")
        # peft records the folder it saved to (a random temporary one) as base_model_name_or_path: the
        # fixture's bytes, and every export id made from them, would change with each build.
        adapter = json.loads((Path(tmp) / "adapter_config.json").read_text())
        adapter["base_model_name_or_path"] = None
    _write_json(folder / "adapter_config.json", adapter)


def write_tiny_checkpoint(out_dir: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write the tiny checkpoint to ``out_dir`` (which must not exist yet, or be empty) and return it.

    Files go to a temporary folder beside ``out_dir`` that is renamed into place when complete, so a
    reader never sees a half-written checkpoint and an interrupted run leaves no partial ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir.parent)
    tmp = make_temp_dir(out_dir, "fixture")
    try:
        _write_checkpoint_files(tmp, spec)
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors are written 0600: make the folder's modes uniform
        tmp.chmod(0o755)
        os.rename(tmp, out_dir)  # atomic; fails if out_dir exists and is not empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def cache_root() -> Path:
    """``$GRANITE_ONNX_CACHE``, default ``~/.cache/granite-onnx``."""
    return Path(os.environ.get("GRANITE_ONNX_CACHE") or Path.home() / ".cache" / "granite-onnx")


def tiny_checkpoint_dir(spec: TinySpec = TinySpec()) -> Path:
    """The cached tiny checkpoint for ``spec``, written on first use.

    The folder name carries the spec's hash, so a changed spec or package version never reuses a stale
    folder. Two processes racing to build it are safe: the loser's rename fails and it uses the winner's.
    """
    target = cache_root() / f"tiny-{spec.short_hash()}"
    if (target / "config.json").is_file():
        return target
    try:
        return write_tiny_checkpoint(target, spec)
    except OSError:
        if (target / "config.json").is_file():
            return target
        raise
