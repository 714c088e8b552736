"""granite-onnx: Granite Speech checkpoints -> portable ONNX bundles, proven against PyTorch."""

__version__ = "0.1.0"
