"""Errors a user can act on.

Every error the CLI is expected to meet derives from :class:`GraniteOnnxError`; the CLI prints its
message as one line and exits with code 2. Anything else is a bug and keeps its traceback.
"""

import errno


class GraniteOnnxError(Exception):
    """A user-facing failure: the message names the file and the fix."""


class CheckpointError(GraniteOnnxError):
    """The checkpoint folder is missing, partial, or not a supported Granite Speech model."""


class AudioError(GraniteOnnxError):
    """An audio file cannot be read or is unusable (empty, silent, too long)."""


class BundleError(GraniteOnnxError):
    """An ONNX bundle is missing files, is corrupt, or breaks the graph contract."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``) raised inside the process so it unwinds like Ctrl-C.

    A KeyboardInterrupt subclass, so no ``except Exception`` on the way can swallow it and every
    staging folder's cleanup runs.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# OSErrors a user fixes outside the program (free space, permissions), not bugs: the CLI turns them
# into one line and exit code 2 instead of a traceback.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def from_os_error(exc: OSError) -> GraniteOnnxError | None:
    """The one-line user error for a full disk or a refused write, or None for any other OSError."""
    where = exc.filename or "the output"
    if exc.errno in _FULL:
        return GraniteOnnxError(
            f"could not write {where} ({exc.strerror}): free disk space (or lift the file-size limit) or "
            "choose another folder; nothing half-written was moved into place"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return GraniteOnnxError(f"{where}: the name is too long for this filesystem; choose a shorter path")
    if exc.errno in _DENIED:
        return GraniteOnnxError(
            f"permission denied on {where} ({exc.strerror}): fix its permissions or choose another folder"
        )
    return None
