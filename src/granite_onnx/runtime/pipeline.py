"""Greedy speech-to-text over the three graphs with onnxruntime alone (no torch import).

encoder(features) -> audio embeddings; prompt_encode(prompt ids with one audio token per
embedding) -> first logits + KV; then decode_step once per token until an end-of-sequence id or
the token budget. By default decode_step runs with a fixed-capacity cache written in place
(:mod:`.kv_cache`); ``kv_cache="concat"`` runs the file as it is, the cache carried as plain arrays
named by the graph specs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AudioError, BundleError
from ..specs import DECODE_STEP, ENCODER, FRONTEND, PROMPT_ENCODE, past_name
from .audio import load_audio
from .bundle import Bundle, graph_file
from .features import audio_token_count, log_mel, min_audio_samples
from .frontend import FRONTENDS, bundle_frontend
from .kv_cache import CACHE_POSITION, StaticDecoder, static_cache_graph
from .lean import batch_specialised, fold_shapes
from .prompt import PromptBuilder
from .sessions import SharedWeights, open_session

DEFAULT_MAX_NEW_TOKENS = 200
# "static": decode_step rewritten at load to write into preallocated buffers (no per-step copy of the
# past); "concat": the exported graph as it is, each step's present a new, longer array.
KV_CACHES = ("static", "concat")
DEFAULT_KV_CACHE = "static"
DEFAULT_DECODE_BATCH = 1  # what generate steps: one utterance


@dataclass(frozen=True)
class GreedyResult:
    """Generated ids (eos excluded) and, per step, the top-1 minus top-2 logit margin."""

    token_ids: tuple[int, ...]
    margins: tuple[float, ...]
    stopped_on_eos: bool


@dataclass(frozen=True)
class Transcript:
    text: str
    token_ids: tuple[int, ...]
    audio_seconds: float
    seconds: float


def decode_form(kv_cache: str = DEFAULT_KV_CACHE, decode_batch: int | None = DEFAULT_DECODE_BATCH) -> dict:
    """What a :class:`SpeechPipeline` with these options makes of decode_step at load (recorded beside the
    parity figures it produced): the static cache's rewrite, and the batch fixed with shapes folded."""
    return {
        "kv_cache": kv_cache,
        "batch": decode_batch if decode_batch is not None else "dynamic",
        "shapes_folded": decode_batch is not None,
        "source": "granite_onnx.runtime.kv_cache / granite_onnx.runtime.lean, applied at load",
    }


def step_feeds(num_layers: int, token: np.ndarray, kv: list[np.ndarray]) -> dict[str, np.ndarray]:
    """decode_step's feeds: ``token`` [batch, 1] after a cache ``kv`` (the presents, in spec order)."""
    batch, past = token.shape[0], kv[0].shape[2]
    feeds = {
        "input_ids": token.astype(np.int64),
        "attention_mask": np.ones((batch, past + 1), np.int64),
        "position_ids": np.full((batch, 1), past, np.int64),
    }
    names = [past_name(i, k) for i in range(num_layers) for k in ("key", "value")]
    feeds.update(zip(names, kv, strict=True))
    return feeds


def top2_margin(logits: np.ndarray) -> float:
    top = np.partition(logits.ravel(), -2)[-2:]
    return float(top[1] - top[0])


class ConcatDecoder:
    """The exported decode_step as it is: each step's presents become the next step's past."""

    def __init__(self, pipeline: SpeechPipeline, kv: list[np.ndarray]):
        self.pipeline = pipeline
        self.kv = kv

    def step(self, token: np.ndarray) -> np.ndarray:
        logits, self.kv = self.pipeline.step(token, self.kv)
        return logits


class SpeechPipeline:
    """The three sessions of one bundle tier, plus its prompt builder."""

    def __init__(
        self,
        folder: Path,
        tier: str | None = None,
        threads: int | None = None,
        opt_level: str = "all",
        prepack: bool = True,
        weight_only: str = "default",
        share_weights: bool = True,
        graphs: Sequence[str] | None = None,
        frontend: str = "numpy",
        kv_cache: str = DEFAULT_KV_CACHE,
        decode_batch: int | None = DEFAULT_DECODE_BATCH,
        profile_prefix: str | None = None,
    ):
        """``prepack=False`` keeps weights memory-mapped (no per-session copy): for tools that hold a
        pipeline beside other large work, such as calibration before quantising a 2B model.
        ``weight_only``: how onnxruntime computes the int8w tier (see sessions.WEIGHT_ONLY_ACCURACY).
        ``share_weights``: in the shared layout, hold the weights of ``*.shared.onnx_data`` once for all
        sessions (:class:`SharedWeights`); no effect on a bundle with one sidecar per graph.
        ``graphs``: open only these sessions (a tool that runs one graph at a time holds one in memory).
        ``frontend``: "numpy" computes the features with :mod:`.features`, "onnx" runs the bundle's
        ``frontend.onnx`` (what a consumer outside Python runs); both give the same features.
        ``kv_cache``: see KV_CACHES. ``decode_batch``: fix decode_step's batch at load; 1 (the default) is
        what :meth:`generate` steps, and onnxruntime then folds the batch arithmetic; None keeps it dynamic,
        for callers that step batches by hand.
        ``profile_prefix``: run every session under onnxruntime's profiler (see sessions.session_options)."""
        if frontend not in FRONTENDS:  # before the bundle is opened: a typo fails first
            raise BundleError(f"unknown front-end {frontend!r}; choose from {', '.join(FRONTENDS)}")
        if kv_cache not in KV_CACHES:
            raise BundleError(f"unknown KV cache {kv_cache!r}; choose from {', '.join(KV_CACHES)}")
        self.kv_cache = kv_cache
        self.decode_batch = decode_batch
        self.bundle = Bundle.open(folder, tier)
        self.frontend = bundle_frontend(self.bundle, frontend, threads)
        self.prompts = PromptBuilder(self.bundle.folder)
        specs = self.bundle.specs
        self.specs = specs
        self.shared = SharedWeights(self.bundle.folder) if share_weights else None
        self.sessions = {}
        # The file as it is (no rewrite: onnxruntime reads it from its path) unless an option changes it.
        rewrites = kv_cache == "static" or decode_batch is not None
        for name in graphs or specs:
            shared = self.shared.initializers(self.bundle.path(name)) if self.shared else []
            # Pre-packing would give each session its own packed copy of the shared weights (measured at
            # full size: 14 GiB of anonymous memory for the 7 GiB LLM), so a session reading them does not.
            self.sessions[name] = open_session(
                self.bundle.path(name),
                threads,
                opt_level,
                prepack and not shared,
                weight_only,
                shared,
                self._decode_rewrite if name == DECODE_STEP and rewrites else None,
                profile_prefix,
            )

    def _decode_rewrite(self, model):
        """What decode_step is made into at load: the static cache's rewrite, then the batch fixed and the
        shape arithmetic folded."""
        if self.kv_cache == "static":
            model = static_cache_graph(model, self.bundle.dims.num_layers)
        if self.decode_batch is not None:
            model = fold_shapes(batch_specialised(model, self.decode_batch))
        return model

    # --- one call per graph -------------------------------------------------------------
    def features(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """[1, frames, 160] stacked log-mel of one utterance and its audio token count, by this
        pipeline's front-end (numpy, or the bundle's frontend.onnx)."""
        if self.frontend is None:
            cfg = self.bundle.features
            return log_mel(audio, cfg)[None], audio_token_count(len(audio), cfg)
        features, counts = self.frontend([np.asarray(audio, np.float32)])
        return features, int(counts[0])

    def audio_embeds(self, features: np.ndarray) -> np.ndarray:
        """[batch, frames, 160] stacked log-mel -> [batch, audio_tokens, hidden]."""
        return self.sessions[ENCODER].run(None, {"input_features": features.astype(np.float32)})[0]

    def prompt(self, input_ids: np.ndarray, audio_embeds: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *kv = self.sessions[PROMPT_ENCODE].run(None, self.prompt_feeds(input_ids, audio_embeds))
        return logits, kv

    def step(self, token: np.ndarray, kv: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decode step; ``token`` is [batch, 1], ``kv`` the previous presents in spec order.

        With the static cache this runs the rewritten graph on a cache one position longer than ``kv``
        (the copy :meth:`generate` avoids), so a caller stepping by hand gets what generate computes."""
        if self.decode_batch is not None and token.shape[0] != self.decode_batch:
            raise BundleError(
                f"this pipeline's decode_step was fixed to a batch of {self.decode_batch} at load; open it "
                f"with decode_batch=None to step a batch of {token.shape[0]}"
            )
        feeds = self.step_feeds(token, kv)
        if self.kv_cache == "static":
            past = kv[0].shape[2]
            for name, value in feeds.items():
                if name.startswith("past_key_values."):
                    feeds[name] = np.concatenate([value, np.zeros_like(value[:, :, :1])], axis=2)
            feeds[CACHE_POSITION] = np.array([past], np.int64)
        logits, *present = self.sessions[DECODE_STEP].run(None, feeds)
        return logits, present

    def start_decode(self, kv: list[np.ndarray], capacity: int) -> StaticDecoder | ConcatDecoder:
        """A decoder over the prompt's cache ``kv``: ``.step(token)`` -> logits, one position each call, up
        to ``capacity`` positions in all (the static cache's size; the concatenating one grows as it goes).
        """
        if self.kv_cache == "concat":
            return ConcatDecoder(self, kv)
        dims = self.bundle.dims
        decoder = StaticDecoder(self.sessions[DECODE_STEP], dims.num_layers, dims.vocab)
        decoder.start(kv, capacity)
        return decoder

    # --- feeds (also what the quantise stage calibrates on) --------------------------------
    @staticmethod
    def prompt_feeds(input_ids: np.ndarray, audio_embeds: np.ndarray) -> dict[str, np.ndarray]:
        batch, seq = input_ids.shape
        return {
            "input_ids": input_ids.astype(np.int64),
            "audio_embeds": audio_embeds,
            "attention_mask": np.ones((batch, seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
        }

    def step_feeds(self, token: np.ndarray, kv: list[np.ndarray]) -> dict[str, np.ndarray]:
        return step_feeds(self.bundle.dims.num_layers, token, kv)

    # --- decoding ------------------------------------------------------------------------
    def prompt_ids(self, audio_tokens: int, instruction: str | None = None) -> np.ndarray:
        return np.asarray([self.prompts.input_ids(audio_tokens, instruction)], dtype=np.int64)

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        limit = self.bundle.dims.max_positions
        if prompt_tokens + max_new_tokens > limit:
            raise AudioError(
                f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the model's "
                f"{limit} positions: split the audio into shorter pieces"
            )

    def generate(self, input_ids: np.ndarray, audio_embeds: np.ndarray, max_new_tokens: int) -> GreedyResult:
        """Greedy decoding for one utterance (batch 1), stopping at an eos id like ``generate``."""
        self.check_length(input_ids.shape[1], max_new_tokens)
        eos = set(self.bundle.eos_token_ids)
        tokens, margins = [], []
        logits, kv = self.prompt(input_ids, audio_embeds)
        decoder = self.start_decode(kv, input_ids.shape[1] + max_new_tokens)
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0]))
            margins.append(top2_margin(logits[0]))
            if token in eos:
                return GreedyResult(tuple(tokens), tuple(margins), True)
            tokens.append(token)
            if len(tokens) == max_new_tokens:
                break
            logits = decoder.step(np.asarray([[token]], np.int64))
        return GreedyResult(tuple(tokens), tuple(margins), False)

    def transcribe_array(
        self,
        audio: np.ndarray,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        instruction: str | None = None,
    ) -> Transcript:
        start = time.perf_counter()
        expected = audio_token_count(len(audio), self.bundle.features)
        input_ids = self.prompt_ids(expected, instruction)
        self.check_length(input_ids.shape[1], max_new_tokens)  # before any graph runs
        features, counted = self.features(audio)
        if counted != expected:
            raise BundleError(
                f"{self.bundle.folder / graph_file(FRONTEND)} counts {counted} audio tokens where the "
                f"feature extractor gives {expected}: the front-end graph is wrong, export it again"
            )
        embeds = self.audio_embeds(features)
        if embeds.shape[1] != expected:
            raise BundleError(
                f"{self.bundle.path(ENCODER)} returned {embeds.shape[1]} audio embeddings where the feature "
                f"extractor gives {expected}: the encoder graph is wrong at this length, export it again"
            )
        result = self.generate(input_ids, embeds, max_new_tokens)
        return Transcript(
            text=self.prompts.decode(list(result.token_ids)),
            token_ids=result.token_ids,
            audio_seconds=len(audio) / self.bundle.features.sampling_rate,
            seconds=time.perf_counter() - start,
        )

    def transcribe_file(
        self, path: Path, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, instruction: str | None = None
    ) -> Transcript:
        cfg = self.bundle.features
        audio = load_audio(path, cfg.sampling_rate, min_samples=min_audio_samples(cfg))
        try:
            return self.transcribe_array(audio, max_new_tokens, instruction)
        except AudioError as exc:  # name the file: the array-level checks cannot
            raise AudioError(f"audio file {path}: {exc}") from exc
