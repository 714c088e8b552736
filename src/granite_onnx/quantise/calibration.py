"""Inputs for static calibration and range checks: real clips run through the FP32 pipeline.

Each graph is calibrated on the inputs it meets in use: the encoder on each clip's stacked log-mel,
prompt_encode on the prompt built around the FP32 encoder's audio embeddings, decode_step on the
KV cache of the FP32 greedy decode a few steps in. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..parity.clips import load_clips
from ..runtime.audio import load_audio
from ..runtime.bundle import Bundle
from ..runtime.ctc import ctc_feeds
from ..runtime.ctc_features import ctc_features
from ..runtime.features import audio_token_count, log_mel
from ..runtime.pipeline import SpeechPipeline
from ..specs import CTC, DECODE_STEP, ENCODER, PROMPT_ENCODE

Feeds = dict[str, np.ndarray]


class FeedStore(Sequence):
    """Feeds kept on disk, one ``.npz`` per sample, loaded one at a time.

    decode_step samples carry the whole KV cache (about 160 KiB per cached token at full size, so
    ~100 MB per sample): holding 80 of them in memory beside a 7 GB graph is what this avoids.
    """

    def __init__(self, folder: Path, name: str):
        self.folder, self.name, self._count = Path(folder).resolve(), name, 0  # cwd may change
        self.folder.mkdir(parents=True, exist_ok=True)

    def append(self, feeds: Feeds) -> None:
        np.savez(self.folder / f"{self.name}-{self._count:05d}.npz", **feeds)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not 0 <= index < self._count:
            raise IndexError(index)
        with np.load(self.folder / f"{self.name}-{index:05d}.npz") as data:
            return {k: data[k] for k in data.files}


@dataclass(frozen=True)
class CalibrationSet:
    """Feeds per graph, and the audio files they came from (recorded in the tier report)."""

    clips: tuple[str, ...]
    feeds: dict[str, FeedStore]
    decode_steps: tuple[int, ...]  # which greedy steps of each clip fed decode_step

    def summary(self) -> dict:
        return {
            "clips": list(self.clips),
            "samples": {g: len(f) for g, f in self.feeds.items()},
            "decode_steps_per_clip": list(self.decode_steps),
        }


def collect(
    bundle: Path,
    clips_dir: Path,
    scratch: Path,
    decode_steps: int = 16,
    decode_stride: int = 4,
    threads: int | None = None,
    graphs: tuple[str, ...] = (ENCODER, PROMPT_ENCODE, DECODE_STEP),
) -> CalibrationSet:
    """Run every clip of ``clips_dir`` through the FP32 bundle and store the inputs of ``graphs`` in
    ``scratch`` (only what they need runs: the encoder's inputs are the log-mel alone, and so are a CTC
    graph's, with its mask).

    decode_step gets every ``decode_stride``-th of the first ``decode_steps * decode_stride`` greedy
    steps of each clip: activations grow as the cache fills, and ranges taken from the first few
    steps only clip later ones (measured on the tiny model: 4 steps per clip made int8s diverge at
    confident steps; 16 spread over 64 did not).
    """
    fp32 = Bundle.open(bundle)
    stores = {g: FeedStore(scratch, g) for g in graphs}
    clips = load_clips(clips_dir)
    kept = tuple(range(0, decode_steps * decode_stride, decode_stride)) if DECODE_STEP in graphs else ()
    if CTC in stores:  # one graph: the clip's features and their all-ones mask
        for clip in clips:
            audio = load_audio(clip.path, fp32.features.sampling_rate)
            stores[CTC].append(ctc_feeds(ctc_features(audio, fp32.features)[None]))
        return CalibrationSet(tuple(c.name for c in clips), stores, ())
    features, lengths = [], []
    for clip in clips:
        audio = load_audio(clip.path, fp32.features.sampling_rate)
        features.append(log_mel(audio, fp32.features)[None])
        lengths.append(len(audio))
        if ENCODER in stores:
            stores[ENCODER].append({"input_features": features[-1]})
    if not {PROMPT_ENCODE, DECODE_STEP} & set(graphs):
        return CalibrationSet(tuple(c.name for c in clips), stores, kept)

    # One FP32 graph open at a time, its weights memory-mapped: at full size each LLM graph maps 7 GB, and
    # all three open at once made int8s peak at 15.1 GiB of RSS for a 7.35 GB graph.
    def encode(pipe: SpeechPipeline) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (pipe.prompt_ids(audio_token_count(n, fp32.features)), pipe.audio_embeds(f))
            for f, n in zip(features, lengths, strict=True)
        ]

    def prompt(pipe: SpeechPipeline) -> list:
        started = []
        for ids, embeds in prompts:
            if PROMPT_ENCODE in stores:
                stores[PROMPT_ENCODE].append(pipe.prompt_feeds(ids, embeds))
            if kept:
                started.append(pipe.prompt(ids, embeds))
        return started

    def decode(pipe: SpeechPipeline) -> None:
        for logits, kv in started:
            for step in range(kept[-1] + 1):
                token = np.asarray([[int(np.argmax(logits[0]))]], np.int64)
                if step in kept:
                    stores[DECODE_STEP].append(pipe.step_feeds(token, kv))
                logits, kv = pipe.step(token, kv)

    prompts = _with_graph(bundle, ENCODER, threads, encode)
    started = _with_graph(bundle, PROMPT_ENCODE, threads, prompt)
    if kept:
        _with_graph(bundle, DECODE_STEP, threads, decode)
    return CalibrationSet(tuple(c.name for c in clips), stores, kept)


def _with_graph(bundle: Path, graph: str, threads: int | None, work):
    """``work(pipe)`` with only ``graph``'s session open (weights memory-mapped), closed afterwards."""
    # The concatenating cache: the feeds recorded are those of the file's own decode_step.
    pipe = SpeechPipeline(
        bundle, threads=threads, prepack=False, graphs=(graph,), kv_cache="concat", decode_batch=None
    )
    try:
        return work(pipe)
    finally:
        pipe.sessions.clear()  # the session, and its mapping of the weights, go now


class FeedReader(CalibrationDataReader):
    """onnxruntime's calibration interface over a fixed list of feeds.

    ``set_range`` lets ``quantize_static`` collect one sample at a time (``CalibStridedMinMax`` 1):
    its histogram calibrators otherwise stack every sample's activations into one array, which
    fails when clips differ in length and holds every activation of every clip in memory at once.
    """

    def __init__(self, feeds: Sequence[Feeds]):
        self._feeds = feeds
        self._next, self._end = 0, len(feeds)

    def get_next(self) -> Feeds | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next, self._end = 0, len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._feeds))

    def __len__(self) -> int:
        return len(self._feeds)
