"""Speech-to-text over a CTC bundle (granite-speech-5.0) with onnxruntime, numpy and tokenizers alone.

features (numpy, :mod:`.ctc_features`) -> ``ctc.onnx`` -> per-frame argmax -> collapse repeats -> drop the
blank -> tokenizer decode. That is ``GraniteSpeech5ForCTC.generate`` (greedy argmax, padded frames set to the
blank) followed by ``ParakeetTokenizer.decode`` (group repeats, drop the pad = blank id), so the ids here
equal the reference's after the same collapse.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..specs import CTC
from .audio import load_audio
from .bundle import Bundle
from .ctc_features import ctc_features
from .features import min_audio_samples
from .frontend import FRONTENDS, bundle_frontend
from .pipeline import Transcript
from .prompt import PromptBuilder
from .sessions import open_session


@dataclass(frozen=True)
class CtcGreedy:
    """Collapsed label ids (blank and repeats removed), the frame labels and each frame's top-1 minus
    top-2 logit margin (what a near-tie gate reads)."""

    token_ids: tuple[int, ...]
    frame_ids: tuple[int, ...]
    margins: tuple[float, ...]


def collapse(frame_ids, blank: int) -> tuple[int, ...]:
    """CTC's greedy rule: merge runs of one label, then drop the blank."""
    return tuple(label for label, _ in itertools.groupby(int(i) for i in frame_ids) if label != blank)


def greedy_ctc(logits: np.ndarray, valid: int, blank: int) -> CtcGreedy:
    """Greedy CTC over the first ``valid`` frames of ``logits`` [frames, vocab] (one utterance)."""
    frames = logits[:valid]
    labels = frames.argmax(-1)
    top = np.partition(frames, -2, axis=-1)[:, -2:] if frames.shape[-1] > 1 else np.zeros((len(frames), 2))
    margins = tuple(float(m) for m in (top[:, 1] - top[:, 0]))
    return CtcGreedy(collapse(labels, blank), tuple(int(i) for i in labels), margins)


def ctc_feeds(features: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's feeds for one utterance [1, frames, 320]: every frame valid."""
    return {
        "input_features": features.astype(np.float32),
        "attention_mask": np.ones(features.shape[:2], np.int64),
    }


class CtcPipeline:
    """The one session of a CTC bundle tier, its front-end and its tokenizer."""

    def __init__(
        self,
        folder: Path,
        tier: str | None = None,
        threads: int | None = None,
        opt_level: str = "all",
        frontend: str = "numpy",
    ):
        """``frontend``: "numpy" computes the features with :mod:`.ctc_features`, "onnx" runs the bundle's
        ``frontend.onnx`` (what a consumer outside Python runs); both give the same features."""
        if frontend not in FRONTENDS:  # before the bundle is opened: a typo fails first
            raise BundleError(f"unknown front-end {frontend!r}; choose from {', '.join(FRONTENDS)}")
        self.bundle = Bundle.open(folder, tier)
        if not self.bundle.is_ctc:
            raise BundleError(
                f"{self.bundle.folder} is not a CTC bundle (its config.json is not granite_speech5_ctc)"
            )
        self.session = open_session(self.bundle.path(CTC), threads, opt_level)
        self.prompts = PromptBuilder(self.bundle.folder)  # its tokenizer; a CTC bundle has no prompt
        self.frontend = bundle_frontend(self.bundle, frontend, threads)

    def features(self, audio: np.ndarray) -> np.ndarray:
        """[1, rows, 320] features of one utterance (every row valid), by this pipeline's front-end."""
        if self.frontend is None:
            return ctc_features(audio, self.bundle.features)[None]
        features, mask = self.frontend([np.asarray(audio, np.float32)])
        if int(mask.sum()) != features.shape[1]:
            raise BundleError(
                f"{self.frontend.path} keeps {int(mask.sum())} of {features.shape[1]} rows of one utterance: "
                "the front-end graph is wrong, export it again"
            )
        return features

    def logits(self, features: np.ndarray) -> np.ndarray:
        """[1, frames, 320] -> [1, ctc_frames, vocab]."""
        return self.session.run(None, ctc_feeds(features))[0]

    def decode(self, features: np.ndarray) -> CtcGreedy:
        logits = self.logits(features)
        valid = self.bundle.dims.output_frames(features.shape[1])
        if logits.shape[1] != valid:
            raise BundleError(
                f"{self.bundle.path(CTC)} returned {logits.shape[1]} frames where {features.shape[1]} input "
                f"frames give {valid}: the graph is wrong at this length, export it again"
            )
        return greedy_ctc(logits[0], valid, self.bundle.dims.blank_id)

    def text(self, ids) -> str:
        return self.prompts.decode(list(ids))

    def transcribe_array(self, audio: np.ndarray) -> Transcript:
        start = time.perf_counter()
        result = self.decode(self.features(audio))
        return Transcript(
            text=self.text(result.token_ids),
            token_ids=result.token_ids,
            audio_seconds=len(audio) / self.bundle.features.sampling_rate,
            seconds=time.perf_counter() - start,
        )

    def transcribe_file(self, path: Path) -> Transcript:
        cfg = self.bundle.features
        audio = load_audio(path, cfg.sampling_rate, min_samples=min_audio_samples(cfg.stft))
        return self.transcribe_array(audio)
