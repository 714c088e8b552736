"""Errors a user can act on.

Every error the CLI is expected to meet derives from :class:`GraniteOnnxError`; the CLI prints its
message as one line and exits with code 2. Anything else is a bug and keeps its traceback.
"""


class GraniteOnnxError(Exception):
    """A user-facing failure: the message names the file and the fix."""


class CheckpointError(GraniteOnnxError):
    """The checkpoint folder is missing, partial, or not a supported Granite Speech model."""


class AudioError(GraniteOnnxError):
    """An audio file cannot be read or is unusable (empty, silent, too long)."""


class BundleError(GraniteOnnxError):
    """An ONNX bundle is missing files, is corrupt, or breaks the graph contract."""
