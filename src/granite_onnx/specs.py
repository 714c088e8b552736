"""The graph contract: one declaration per graph.

Every stage reads these specs instead of repeating names: the exporter takes input/output names and
dynamic axes from them, the runtime builds its feeds from them, the portability audit and the
metadata describe the graphs with them. A new input is added here and nowhere else.

This module is torch-free (the runtime imports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .userfiles import json_kind

ENCODER = "encoder"
PROMPT_ENCODE = "prompt_encode"
DECODE_STEP = "decode_step"
GRAPH_NAMES = (ENCODER, PROMPT_ENCODE, DECODE_STEP)  # the model's graphs: every tier has its own
# The log-mel front-end (waveform -> input_features): float32 DSP, one file shared by every tier.
FRONTEND = "frontend"
BUNDLE_GRAPHS = (FRONTEND, *GRAPH_NAMES)  # pipeline order
# The CTC contract (granite-speech-5.0): one graph, stacked log-mel+delta features + mask -> frame logits.
CTC = "ctc"
CTC_MODEL_TYPE = "granite_speech5_ctc"
ALL_GRAPHS = (*BUNDLE_GRAPHS, CTC)  # every graph name any contract has

OPSET = 20
IR_VERSION = 10
# The one exception to opset 20: the 4-bit tiers' graphs (int4w, and its variants int4w-*) need opset 21,
# the first with int4 and blocked DequantizeLinear. The audit accepts it for these tiers' files, nowhere else.
TIER_OPSETS = {"int4w": 21}
FEATURE_DIM = 160  # two stacked 80-bin log-mel frames


_REQUIRED = object()


def _section(config: dict, key: str, required: bool = False) -> dict:
    """A nested object of the config (``text_config``); absent or null is empty unless ``required``."""
    value = config.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object, got {'nothing' if value is None else json_kind(value)}")
    return value


def _dim(section: dict, dotted: str, default: object = _REQUIRED) -> int:
    """A positive int of ``section`` (key: the part of ``dotted`` after the dot); null means the default."""
    value = section.get(dotted.rpartition(".")[2])
    if value is None:
        if default is _REQUIRED:
            raise ValueError(f"{dotted} is missing")
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{dotted} must be a positive integer, got {value!r:.60}")
    return value


@dataclass(frozen=True)
class ModelDims:
    """The few numbers of a checkpoint that shape the graphs' inputs and outputs."""

    num_layers: int
    kv_heads: int
    head_dim: int
    hidden: int  # LLM hidden size (= projector output size)
    vocab: int
    audio_token_id: int
    feature_dim: int = FEATURE_DIM
    max_positions: int = 4096

    @classmethod
    def from_config(cls, config: dict) -> ModelDims:
        """Read the dims from a parsed Granite Speech ``config.json`` (no transformers needed).

        Raises:
            ValueError: a key the dims need is missing or is not a positive integer (a corrupt or
                hand-edited file). The message names the key; the caller, who knows the file, adds
                its name and the fix. Checked here so a bad value fails at open, not deep in a graph.
        """
        if not isinstance(config, dict):
            raise ValueError(f"the config is a JSON {json_kind(config)}, not an object")
        text = _section(config, "text_config", required=True)
        heads = _dim(text, "text_config.num_attention_heads")
        hidden = _dim(text, "text_config.hidden_size")
        vocab = _dim(text, "text_config.vocab_size")
        head_dim = _dim(text, "text_config.head_dim", hidden // heads)
        audio = config.get("audio_token_index")
        if audio is None:
            audio = config.get("audio_token_id")
        if audio is not None and (
            isinstance(audio, bool) or not isinstance(audio, int) or not 0 <= audio < vocab
        ):
            raise ValueError(
                f"audio_token_index must be an integer id below text_config.vocab_size {vocab}, "
                f"got {audio!r:.60}"
            )
        return cls(
            num_layers=_dim(text, "text_config.num_hidden_layers"),
            kv_heads=_dim(text, "text_config.num_key_value_heads", heads),
            head_dim=head_dim,
            hidden=hidden,
            vocab=vocab,
            audio_token_id=audio,
            feature_dim=_dim(_section(config, "encoder_config"), "encoder_config.input_dim", FEATURE_DIM),
            max_positions=_dim(text, "text_config.max_position_embeddings", 4096),
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelDims:
        return cls.from_config(json.loads(Path(path).read_text()))

    @property
    def graph_names(self) -> tuple[str, ...]:
        return GRAPH_NAMES


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type, and shape (str = symbolic dim)."""

    name: str
    dtype: str  # numpy dtype name: "float32" or "int64"
    shape: tuple[str | int, ...]

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """A graph's ordered inputs and outputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ``dynamic_axes`` argument of ``torch.onnx.export``."""
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}

    def to_json(self) -> dict:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(frozen=True)
class CtcDims:
    """The numbers of a CTC checkpoint (``GraniteSpeech5CTCConfig``) that shape its one graph."""

    vocab: int
    hidden: int
    context_size: int  # attention block length (frames at the layer's own rate)
    subsampling: int  # how many times the encoder halves the frame rate (len(subsample_layers))
    blank_id: int  # the CTC blank, = pad_token_id (0 in every published checkpoint)
    num_mel_bins: int = 80
    max_positions: int = 512  # the relative-position table's half width (max_position_embeddings)

    @property
    def feature_dim(self) -> int:
        """Each mel frame with its delta, two frames stacked."""
        return self.num_mel_bins * 4

    @property
    def graph_names(self) -> tuple[str, ...]:
        return (CTC,)

    def output_frames(self, frames: int) -> int:
        """Logit frames for ``frames`` input frames: every subsampling block drops an odd last frame."""
        for _ in range(self.subsampling):
            frames //= 2
        return frames

    @classmethod
    def from_config(cls, config: dict) -> CtcDims:
        """Read the dims from a parsed ``granite_speech5_ctc`` ``config.json`` (ValueError names the key)."""
        encoder = _section(config, "encoder_config", required=True)
        layers = encoder.get("subsample_layers", [0, 1])
        if not isinstance(layers, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers
        ):
            raise ValueError(
                f"encoder_config.subsample_layers must be a list of layer indices, got {layers!r:.60}"
            )
        vocab = _dim(config, "vocab_size", _dim(encoder, "encoder_config.vocab_size", 16384))
        blank = config.get("pad_token_id", 0)
        if isinstance(blank, bool) or not isinstance(blank, int) or not 0 <= blank < vocab:
            raise ValueError(
                f"pad_token_id (the CTC blank) must be an id below vocab_size {vocab}, got {blank!r:.60}"
            )
        return cls(
            vocab=vocab,
            hidden=_dim(encoder, "encoder_config.hidden_size"),
            context_size=_dim(encoder, "encoder_config.context_size", 128),
            subsampling=len(layers),
            blank_id=blank,
            num_mel_bins=_dim(encoder, "encoder_config.num_mel_bins", 80),
            max_positions=_dim(encoder, "encoder_config.max_position_embeddings", 512),
        )


def dims_from_config(config: dict) -> ModelDims | CtcDims:
    """The dims of a parsed ``config.json``, by its contract: CTC for ``granite_speech5_ctc``, else the
    autoregressive three graphs."""
    if isinstance(config, dict) and config.get("model_type") == CTC_MODEL_TYPE:
        return CtcDims.from_config(config)
    return ModelDims.from_config(config)


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def _kv(dims: ModelDims, name_of, seq: str) -> tuple[TensorSpec, ...]:
    shape = ("batch", dims.kv_heads, seq, dims.head_dim)
    return tuple(
        TensorSpec(name_of(i, kind), "float32", shape)
        for i in range(dims.num_layers)
        for kind in ("key", "value")
    )


def encoder_spec(dims: ModelDims) -> GraphSpec:
    return GraphSpec(
        ENCODER,
        inputs=(TensorSpec("input_features", "float32", ("batch", "frames", dims.feature_dim)),),
        outputs=(TensorSpec("audio_embeds", "float32", ("batch", "audio_tokens", dims.hidden)),),
    )


def prompt_encode_spec(dims: ModelDims) -> GraphSpec:
    return GraphSpec(
        PROMPT_ENCODE,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "seq")),
            TensorSpec("audio_embeds", "float32", ("batch", "audio_tokens", dims.hidden)),
            TensorSpec("attention_mask", "int64", ("batch", "seq")),
            TensorSpec("position_ids", "int64", ("batch", "seq")),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", dims.vocab)), *_kv(dims, present_name, "seq")),
    )


def decode_step_spec(dims: ModelDims) -> GraphSpec:
    return GraphSpec(
        DECODE_STEP,
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", 1)),
            TensorSpec("attention_mask", "int64", ("batch", "total")),
            TensorSpec("position_ids", "int64", ("batch", 1)),
            *_kv(dims, past_name, "past"),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", dims.vocab)), *_kv(dims, present_name, "total")),
    )


def frontend_spec(feature_dim: int = FEATURE_DIM, ctc: bool = False) -> GraphSpec:
    """``waveform`` [batch, samples] + ``num_samples`` [batch] -> the encoder's ``input_features`` and the
    number of audio tokens each utterance gets in the prompt (``export/frontend.py`` builds the graph); a CTC
    bundle's (``export/ctc_frontend.py``): the CTC graph's two inputs, the features and their
    ``attention_mask``."""
    second = (
        TensorSpec("attention_mask", "int64", ("batch", "frames"))
        if ctc
        else TensorSpec("audio_token_count", "int64", ("batch",))
    )
    return GraphSpec(
        FRONTEND,
        inputs=(
            TensorSpec("waveform", "float32", ("batch", "samples")),
            TensorSpec("num_samples", "int64", ("batch",)),
        ),
        outputs=(TensorSpec("input_features", "float32", ("batch", "frames", feature_dim)), second),
    )


def ctc_spec(dims: CtcDims) -> GraphSpec:
    """Stacked log-mel+delta features and their frame mask -> CTC logits at the subsampled rate (the
    logits of a padded frame are not masked: the decoder drops them, as ``generate`` does)."""
    return GraphSpec(
        CTC,
        inputs=(
            TensorSpec("input_features", "float32", ("batch", "frames", dims.feature_dim)),
            TensorSpec("attention_mask", "int64", ("batch", "frames")),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", "ctc_frames", dims.vocab)),),
    )


def graph_specs(dims: ModelDims | CtcDims) -> dict[str, GraphSpec]:
    if isinstance(dims, CtcDims):
        return {CTC: ctc_spec(dims)}
    return {
        ENCODER: encoder_spec(dims),
        PROMPT_ENCODE: prompt_encode_spec(dims),
        DECODE_STEP: decode_step_spec(dims),
    }


def audio_tokens_for_frames(frames: int, window: int = 15, downsample: int = 5) -> int:
    """Projector output length for ``frames`` stacked encoder frames (one query per ``downsample``)."""
    return -(-frames // window) * (window // downsample)


def dummy_inputs(
    spec: GraphSpec, dims: ModelDims, seed: int = 0, *, batch: int = 1, frames: int = 430, past: int = 9
) -> dict[str, np.ndarray]:
    """Example inputs used to trace (and, at other sizes, to check) a graph.

    The default sizes are deliberately not special: 430 encoder frames is a partial 200-frame
    attention block and a partial 15-frame projector window, so a length baked in by tracing shows up
    at any other length; the prompt holds the audio tokens in the middle, as a real chat prompt does.
    """
    rng = np.random.default_rng(seed)
    if spec.name == CTC:
        # 430 frames pad the last attention block of every layer at context 16 (tiny) and 128 (5.0), so
        # the padding branch is traced; row b of a batch has its last b * frames // 3 frames masked.
        mask = np.ones((batch, frames), np.int64)
        for row in range(1, batch):
            mask[row, frames - row * frames // 3 :] = 0
        features = rng.standard_normal((batch, frames, dims.feature_dim)).astype(np.float32)
        return {"input_features": features, "attention_mask": mask}
    audio_tokens, text_before, text_after = audio_tokens_for_frames(frames), 5, 7
    if spec.name == ENCODER:
        return {"input_features": rng.standard_normal((batch, frames, dims.feature_dim)).astype(np.float32)}
    if spec.name == PROMPT_ENCODE:
        ids = np.concatenate(
            [
                rng.integers(0, dims.audio_token_id, (batch, text_before)),
                np.full((batch, audio_tokens), dims.audio_token_id),
                rng.integers(0, dims.audio_token_id, (batch, text_after)),
            ],
            axis=1,
        ).astype(np.int64)
        seq = ids.shape[1]
        return {
            "input_ids": ids,
            "audio_embeds": rng.standard_normal((batch, audio_tokens, dims.hidden)).astype(np.float32),
            "attention_mask": np.ones((batch, seq), np.int64),
            "position_ids": np.arange(seq, dtype=np.int64)[None].repeat(batch, 0),
        }
    feeds = {
        "input_ids": rng.integers(0, dims.audio_token_id, (batch, 1)).astype(np.int64),
        "attention_mask": np.ones((batch, past + 1), np.int64),
        "position_ids": np.full((batch, 1), past, np.int64),
    }
    for t in spec.inputs[3:]:
        feeds[t.name] = rng.standard_normal((batch, dims.kv_heads, past, dims.head_dim)).astype(np.float32)
    return feeds
