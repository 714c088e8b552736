"""Train the small Granite Speech behind ``--model trained``: ``python -m training.train --out DIR``.

Same classes as 4.1-2b (conformer CTC encoder, Q-Former projector, Granite LLM with GQA), toy sizes.
Two losses: the LLM's next-token loss on the transcript, and a character CTC loss on the encoder's
middle layer (through the encoder's own ``out`` layer, whose softmax 4.1-2b feeds back through
``out_mid``) and on its last layer (through the same ``out``, training only). CTC teaches the
encoder to hear in minutes; the LLM then only has to read it. Every waveform is augmented on the fly
(speed, gain, noise) so the encoder learns sound, not one rendering per sentence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from granite_onnx.fixtures import (
    AUDIO_TOKEN,
    LEADING_SPECIAL_TOKENS,
    PROCESSOR_CLASS,
    TinySpec,
    build_config,
    build_tokenizer,
    preprocessor_config,
    processor_config,
)
from granite_onnx.runtime.features import FeatureConfig, audio_token_count, log_mel
from granite_onnx.runtime.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from granite_onnx.staging import staged_dir
from granite_onnx.toolchain import versions

from .corpus import vocabulary
from .data import DataRecipe, build
from .synth import Utterance

CHARS = " abcdefghijklmnopqrstuvwxyz'"  # CTC targets; index 0 is the blank

SPEC = TinySpec(
    bpe_vocab_size=512,
    encoder_num_layers=4,
    encoder_hidden_dim=256,
    encoder_num_heads=4,
    encoder_dim_head=64,
    encoder_output_dim=len(CHARS) + 1,
    encoder_feedforward_mult=2,
    projector_hidden_size=256,
    projector_num_layers=2,
    projector_num_heads=4,
    projector_intermediate_size=512,
    text_hidden_size=256,
    text_num_layers=4,
    text_num_heads=4,
    text_num_kv_heads=2,
    text_intermediate_size=768,
    text_logits_scaling=1.0,
)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    steps: int = 3000
    batch: int = 16
    lr: float = 1.5e-3
    warmup: int = 200
    ctc_weight: float = 0.5
    # CTC over the LLM's own tokens on the projector's output (through a training-only head): each audio
    # embedding is pushed to say which word it holds, so the LLM reads words instead of guessing them from
    # the grammar (phase 1 without it: encoder CTC 0.02, yet held-out CER 44 %, content words invented).
    projector_ctc_weight: float = 0.0
    # A later phase can keep the encoder as it is (its held-out CTC CER was 1.3 % after phase 2) and train
    # only the projector and the LLM: their held-out LM loss was 3x their training loss, the LLM had
    # learnt the 1600 training sentences by heart and completed held-out ones from memory.
    freeze_encoder: bool = False
    # The share of the transcript's input tokens replaced by other transcript tokens while teacher forcing:
    # a prefix that cannot be trusted makes the LLM read the audio for every word.
    token_noise: float = 0.0
    # Start the projector and the LLM afresh on top of the resumed encoder: an LLM that learnt the language
    # before the encoder could hear keeps completing sentences from memory (phase 3 resumed: CER 34 %).
    reinit_llm: bool = False
    train_sentences: int = 6000  # the DataRecipe's training set size (phases 1 and 2 had 1600)
    seed: int = 0
    threads: int = 2


def tokenizer_corpus(texts: list[str]) -> tuple[str, ...]:
    return (*texts, DEFAULT_INSTRUCTION, "user assistant")


def make_tokenizer(texts: list[str]):
    """BPE on the transcripts and the prompt text (build_tokenizer fails, naming the size, if the corpus
    cannot fill SPEC's vocabulary)."""
    return SPEC, build_tokenizer(SPEC, tokenizer_corpus(texts))


def write_checkpoint_files(folder: Path, spec: TinySpec, tokenizer, model) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer._set_processor_class(PROCESSOR_CLASS)
    for key in ("is_local", "local_files_only"):  # where a resumed phase loaded it from: not a property
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(folder)
    for name, doc in (
        ("preprocessor_config.json", preprocessor_config(spec)),
        ("processor_config.json", processor_config(spec)),
    ):
        (folder / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def new_model(spec: TinySpec, tokenizer):
    from transformers import GraniteSpeechForConditionalGeneration

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (*LEADING_SPECIAL_TOKENS, AUDIO_TOKEN)}
    config = build_config(spec, ids)
    model = GraniteSpeechForConditionalGeneration(config).float()
    text = config.text_config
    model.generation_config.bos_token_id = text.bos_token_id
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = text.pad_token_id
    return model


# --- augmentation and batches -----------------------------------------------------------------------------


def augment(audio: np.ndarray, r: random.Random) -> np.ndarray:
    """Speed (resampling, 0.9-1.1), gain (+-6 dB) and noise (white or brown, 8-40 dB SNR)."""
    x = audio.astype(np.float64) / 32768
    speed = r.choice((0.9, 0.95, 1.0, 1.0, 1.05, 1.1))
    if speed != 1.0:
        x = resample_poly(x, 100, round(100 * speed))
    x *= 10 ** (r.uniform(-6, 6) / 20)
    if r.random() < 0.8:
        rng = np.random.default_rng(r.randrange(2**32))
        noise = rng.standard_normal(len(x))
        if r.random() < 0.5:
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(401) / 401, mode="same")
        snr = r.uniform(8, 40)
        noise *= math.sqrt(np.mean(x**2) / max(np.mean(noise**2), 1e-12)) * 10 ** (-snr / 20)
        x = x + noise
    return np.clip(x, -1, 1).astype(np.float32)


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    input_features: torch.Tensor
    input_features_mask: torch.Tensor
    ctc_targets: torch.Tensor
    ctc_target_lengths: torch.Tensor
    frame_lengths: torch.Tensor


def ctc_ids(text: str) -> list[int]:
    return [CHARS.index(c) + 1 for c in text]


def make_batch(utts: list[Utterance], audios: list[np.ndarray], prompts: PromptBuilder, cfg, pad_id, eos_id):
    feats = [log_mel(a, cfg) for a in audios]
    frames = max(f.shape[0] for f in feats)
    features = np.zeros((len(feats), frames, feats[0].shape[1]), np.float32)
    for i, f in enumerate(feats):
        features[i, : f.shape[0]] = f
    tokens = [audio_token_count(len(a), cfg) for a in audios]
    mask = np.zeros((len(feats), max(tokens)), bool)
    rows, label_rows = [], []
    for i, (u, n) in enumerate(zip(utts, tokens, strict=True)):
        mask[i, :n] = True
        prompt = prompts.input_ids(n)
        answer = prompts.tokenizer.encode(u.text, add_special_tokens=False).ids + [eos_id]
        rows.append(prompt + answer)
        label_rows.append([-100] * len(prompt) + answer)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, lab) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(row)] = 1
    targets = [ctc_ids(u.text) for u in utts]
    return Batch(
        input_ids,
        attention,
        labels,
        torch.from_numpy(features),
        torch.from_numpy(mask),
        torch.tensor([t for ts in targets for t in ts]),
        torch.tensor([len(t) for t in targets]),
        torch.tensor([f.shape[0] for f in feats]),
    )


def batches(train: list[Utterance], options: TrainOptions, r: random.Random):
    """Length-bucketed batches: padding in the encoder (which has no mask) stays small."""
    order = sorted(range(len(train)), key=lambda i: len(train[i].audio))
    while True:
        start = r.randrange(0, max(1, len(order) - options.batch * 4))
        window = order[start : start + options.batch * 4]
        yield [train[i] for i in r.sample(window, min(options.batch, len(window)))]


def noisy_inputs(batch: Batch, share: float, eos_id: int, r: random.Random) -> torch.Tensor:
    """The batch's input ids with ``share`` of the transcript tokens swapped for other transcript tokens
    (never the prompt, audio tokens or EOS); labels stay the true transcript."""
    if not share:
        return batch.input_ids
    ids = batch.input_ids.clone()
    answer = (batch.labels != -100) & (batch.labels != eos_id)
    pool = ids[answer]
    g = torch.Generator().manual_seed(r.randrange(2**31))
    swap = answer & (torch.rand(ids.shape, generator=g) < share)
    ids[swap] = pool[torch.randint(len(pool), (int(swap.sum()),), generator=g)]
    return ids


# --- training ----------------------------------------------------------------------------------------------


def train(
    model,
    data: dict[str, list[Utterance]],
    prompts: PromptBuilder,
    options: TrainOptions,
    log,
    snapshot: Path | None = None,
) -> None:
    torch.manual_seed(options.seed)
    r = random.Random(options.seed)
    cfg = FeatureConfig(
        projector_window_size=SPEC.window_size, projector_downsample_rate=SPEC.downsample_rate
    )
    text = model.config.text_config
    encoder = model.model.encoder
    captured: dict[str, torch.Tensor] = {}

    def keep_mid(module, inputs, output) -> None:  # the first call per forward is the middle layer's
        if "mid" not in captured:
            captured["mid"] = output

    def keep_last(module, inputs, output) -> None:
        captured["last"] = output.last_hidden_state

    def keep_projected(module, inputs, output) -> None:
        captured["projected"] = output

    hooks = [
        encoder.out.register_forward_hook(keep_mid),
        encoder.register_forward_hook(keep_last),
        model.model.projector.register_forward_hook(keep_projected),
    ]
    vocab = model.config.text_config.vocab_size
    token_head = torch.nn.Linear(model.config.text_config.hidden_size, vocab + 1)  # + blank; not shipped
    params = [*model.parameters(), *token_head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < options.warmup:
            return options.lr * (step + 1) / options.warmup
        progress = (step - options.warmup) / max(1, options.steps - options.warmup)
        return options.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    if options.freeze_encoder:
        encoder.requires_grad_(False)
        encoder.eval()
        params = [p for p in params if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.01, betas=(0.9, 0.98))
    stream = batches(data["train"], options, r)
    start = time.perf_counter()
    for step in range(options.steps):
        utts = next(stream)
        batch = make_batch(
            utts, [augment(u.audio, r) for u in utts], prompts, cfg, text.pad_token_id, text.eos_token_id
        )
        captured.clear()
        out = model(
            input_ids=noisy_inputs(batch, options.token_noise, text.eos_token_id, r),
            attention_mask=batch.attention_mask,
            input_features=batch.input_features,
            input_features_mask=batch.input_features_mask,
            labels=batch.labels,
        )
        ctc = torch.zeros(())
        for logits in () if options.freeze_encoder else (captured["mid"], encoder.out(captured["last"])):
            logp = torch.log_softmax(logits, -1).transpose(0, 1)
            ctc = ctc + torch.nn.functional.ctc_loss(
                logp, batch.ctc_targets, batch.frame_lengths, batch.ctc_target_lengths, zero_infinity=True
            )
        loss = out.loss + options.ctc_weight * ctc / 2
        if options.projector_ctc_weight:
            logp = torch.log_softmax(token_head(captured["projected"]), -1).transpose(0, 1)
            answers = [
                [t for t in row[row != -100].tolist() if t != text.eos_token_id] for row in batch.labels
            ]
            loss = loss + options.projector_ctc_weight * torch.nn.functional.ctc_loss(
                logp,
                torch.tensor([t for a in answers for t in a]),
                batch.input_features_mask.sum(1),
                torch.tensor([len(a) for a in answers]),
                blank=vocab,
                zero_infinity=True,
            )
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        if snapshot is not None and step and step % 250 == 0:
            torch.save(model.state_dict(), snapshot)  # a crash late in a long run keeps its progress
        if step % 50 == 0 or step == options.steps - 1:
            elapsed = time.perf_counter() - start
            losses = f"lm {out.loss.item():.3f}  ctc {ctc.item() / 2:.3f}"
            log(f"step {step:5d}  {losses}  lr {lr_at(step):.2e}  {elapsed:.0f} s")
    for hook in hooks:
        hook.remove()
    model.eval()


@torch.no_grad()
def evaluate(model, utts: list[Utterance], prompts: PromptBuilder) -> dict:
    """Greedy PyTorch decoding on clean held-out audio: CER, WER and the top-1/top-2 logit margins."""
    import jiwer

    cfg = FeatureConfig(
        projector_window_size=SPEC.window_size, projector_downsample_rate=SPEC.downsample_rate
    )
    hyps, margins = [], []
    eos = model.config.text_config.eos_token_id
    for u in utts:
        audio = u.audio.astype(np.float32) / 32768
        feats = torch.from_numpy(log_mel(audio, cfg))[None]
        ids = torch.tensor([prompts.input_ids(audio_token_count(len(audio), cfg))])
        out = model.generate(
            input_ids=ids,
            input_features=feats,
            max_new_tokens=64,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        for score in out.scores:
            top = torch.topk(score[0].float(), 2).values
            margins.append(float(top[0] - top[1]))
        new = out.sequences[0, ids.shape[1] :].tolist()
        hyps.append(prompts.decode([t for t in new if t != eos]))
    refs = [u.text for u in utts]
    return {
        "cer": jiwer.cer(refs, hyps),
        "wer": jiwer.wer(refs, hyps),
        "median_margin": float(np.median(margins)),
        "p10_margin": float(np.percentile(margins, 10)),
        "examples": [{"reference": a, "hypothesis": b} for a, b in list(zip(refs, hyps, strict=True))[:5]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="Checkpoint folder to write.")
    parser.add_argument("--steps", type=int, default=TrainOptions.steps)
    parser.add_argument("--batch", type=int, default=TrainOptions.batch)
    parser.add_argument("--workers", type=int, default=2, help="Processes that synthesise speech.")
    parser.add_argument(
        "--resume", type=Path, help="Start from this state dict (a snapshot of an earlier run)."
    )
    parser.add_argument("--lr", type=float, default=TrainOptions.lr)
    parser.add_argument("--ctc-weight", type=float, default=TrainOptions.ctc_weight)
    parser.add_argument("--projector-ctc-weight", type=float, default=TrainOptions.projector_ctc_weight)
    parser.add_argument("--warmup", type=int, default=TrainOptions.warmup)
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--token-noise", type=float, default=TrainOptions.token_noise)
    parser.add_argument("--train-sentences", type=int, default=TrainOptions.train_sentences)
    parser.add_argument("--reinit-llm", action="store_true")
    parser.add_argument("--seed", type=int, default=TrainOptions.seed)
    args = parser.parse_args()
    options = TrainOptions(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        ctc_weight=args.ctc_weight,
        projector_ctc_weight=args.projector_ctc_weight,
        freeze_encoder=args.freeze_encoder,
        token_noise=args.token_noise,
        train_sentences=args.train_sentences,
        reinit_llm=args.reinit_llm,
        seed=args.seed,
    )
    torch.set_num_threads(options.threads)
    recipe = DataRecipe(train_sentences=options.train_sentences)
    data = build(recipe, args.workers)
    texts = [u.text for u in data["train"]]
    assert vocabulary([u.text for u in data["heldout"]]) <= vocabulary(texts)
    phases = []
    if args.resume:  # a later phase: the first phase's tokenizer and architecture, weights from the last
        from transformers import GraniteSpeechForConditionalGeneration, PreTrainedTokenizerFast

        spec = SPEC
        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.resume)
        model = GraniteSpeechForConditionalGeneration.from_pretrained(args.resume, dtype=torch.float32)
        phases = json.loads((args.resume / "training_recipe.json").read_text())["phases"]
        if options.reinit_llm:
            torch.manual_seed(options.seed)
            fresh = new_model(spec, tokenizer)
            fresh.model.encoder.load_state_dict(model.model.encoder.state_dict())
            model = fresh
    else:
        spec, tokenizer = make_tokenizer(texts)
        torch.manual_seed(options.seed)
        model = new_model(spec, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint_files(Path(tmp), spec, tokenizer, model)  # the prompt as the runtime builds it
        prompts = PromptBuilder(Path(tmp))
        prompts.tokenizer  # noqa: B018 - load now, before the folder goes
        snapshot = args.out.with_name(f".{args.out.name}.snapshot.pt")
        train(model, data, prompts, options, lambda msg: print(msg, flush=True), snapshot)
        model.half().float()  # what ships is FP16: measure that
        result = evaluate(model, data["heldout"], prompts)
    print(json.dumps(result, indent=2))
    with staged_dir(args.out) as stage:  # the shipped checkpoint is replaced whole or not at all
        write_checkpoint_files(stage, spec, tokenizer, model.half())
        write_recipe(stage, [*phases, dataclasses.asdict(options)], recipe, spec, result)


def write_recipe(folder: Path, phases: list[dict], recipe, spec, result: dict) -> None:
    """training_recipe.json: everything needed to train it again, and what it measured after training."""
    from .synth import voice_versions

    doc = {
        "command": "make fixture-train",
        "phases": phases,  # training runs in order, each continuing from the one before
        "data": dataclasses.asdict(recipe),
        "spec": dataclasses.asdict(spec),
        "toolchain": {**versions(), **voice_versions()},
        "heldout_pytorch": result,
    }
    (folder / "training_recipe.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
