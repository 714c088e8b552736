"""What a tier's writer is given for one graph, and the node counting every tier reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from .calibration import CalibrationSet, Feeds

QUANTISABLE = ("MatMul", "Conv", "Gather")


@dataclass(frozen=True)
class GraphJob:
    """Quantise ``src`` (an FP32 graph of the bundle) into ``dst`` + its one sidecar."""

    src: Path
    dst: Path
    excluded: tuple[str, ...]  # node names kept in full precision
    scratch: Path  # an empty folder on the bundle's filesystem, removed afterwards
    calibration: CalibrationSet | None = None
    calibration_method: str = "minmax"
    fp16_headroom: float = 4.0

    @property
    def graph(self) -> str:
        return self.src.stem

    @property
    def feeds(self) -> Sequence[Feeds]:
        if self.calibration is None:
            raise ValueError(f"{self.graph}: this tier needs calibration feeds")
        return self.calibration.feeds[self.graph]


def quantised_nodes(path: Path) -> dict[str, int]:
    """Nodes that now compute in integer form, by the op type they had in FP32.

    MatMulInteger / ConvInteger (dynamic) count as MatMul / Conv; a MatMul, Conv or Gather whose
    weight comes from a DequantizeLinear (QDQ and weight-only) or is itself an integer table (dynamic
    Gather) counts as itself.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    integer = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    dq_outputs |= {i.name for i in graph.initializer if i.data_type in integer}  # a Gather over an int8 table
    counts: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            counts[node.op_type.replace("Integer", "")] += 1
        elif node.op_type in QUANTISABLE and any(i in dq_outputs for i in node.input):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))
