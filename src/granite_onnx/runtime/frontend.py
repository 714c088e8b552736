"""Run a bundle's ``frontend.onnx``: waveforms -> the encoder's features and each utterance's token count.

The graph itself cannot refuse a too-short waveform with a message (ONNX has no assertion op: its
reflect ``Pad`` fails deep in onnxruntime), so the length is checked here first, by the numpy front-end's
own check (one :class:`~granite_onnx.errors.AudioError` line). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..specs import FRONTEND
from .ctc_features import CtcFeatureConfig
from .features import FeatureConfig, check_long_enough
from .sessions import open_session

FRONTENDS = ("numpy", "onnx")  # transcribe --frontend


def pad_batch(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``waveform`` [batch, longest] zero-padded and ``num_samples`` [batch], the graph's two inputs."""
    if not waves:
        raise ValueError("the front-end needs at least one waveform")
    longest = max(len(w) for w in waves)
    batch = np.zeros((len(waves), longest), np.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, np.asarray([len(w) for w in waves], np.int64)


class OnnxFrontend:
    """One session over ``frontend.onnx``."""

    def __init__(self, path: Path, cfg: FeatureConfig | CtcFeatureConfig, threads: int | None = None):
        self.path = Path(path)
        self.cfg = cfg
        self.session = open_session(self.path, threads, opt_level="all")

    def __call__(self, waves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``input_features`` [batch, frames, 2 * n_mels] and ``audio_token_count`` [batch] of ``waves``
        (1-D float waveforms at the bundle's rate; a batch shares the longest one's frame count); a CTC
        bundle's: ``input_features`` [batch, rows, 4 * n_mels] and ``attention_mask`` [batch, rows]."""
        stft = self.cfg.stft if isinstance(self.cfg, CtcFeatureConfig) else self.cfg
        check_long_enough(min(len(w) for w in waves), stft)
        waveform, num_samples = pad_batch(waves)
        features, counts = self.session.run(None, {"waveform": waveform, "num_samples": num_samples})
        return features, counts


def bundle_frontend(bundle, frontend: str, threads: int | None = None) -> OnnxFrontend | None:
    """The front-end a pipeline over ``bundle`` (a :class:`~.bundle.Bundle`) computes its features with:
    None for "numpy" (the recipe in Python), the bundle's ``frontend.onnx`` for "onnx"; one line when
    ``frontend`` is neither or the bundle has no such graph."""
    from .bundle import graph_file

    if frontend not in FRONTENDS:
        raise BundleError(f"unknown front-end {frontend!r}; choose from {', '.join(FRONTENDS)}")
    if frontend == "numpy":
        return None
    path = bundle.folder / graph_file(FRONTEND)
    if not path.is_file():
        raise BundleError(
            f"{path} is missing: the bundle predates the front-end graph, export it again "
            "(or use --frontend numpy)"
        )
    return OnnxFrontend(path, bundle.features, threads)
