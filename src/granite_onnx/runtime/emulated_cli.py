"""``python -m granite_onnx.runtime.emulated_cli ARGS...``: ``granite-onnx ARGS...`` on an emulated AVX2 CPU.

What ``make emulated-avx2`` runs each stage with (see :mod:`.crosscheck`): qemu-user's own crashes are
retried, and the command's exit code (parity's 1 for a failed gate, 2 for a user error) comes back as is.
"""

from __future__ import annotations

import sys

from .crosscheck import run_emulated


def main() -> None:
    try:
        # 5 runs: emulated parity with PyTorch crashed qemu in 2 of its last 3 CI runs (then ran clean)
        done = run_emulated(
            ["-m", "granite_onnx.cli", *sys.argv[1:]], timeout=None, attempts=5, capture=False, check=False
        )
    except RuntimeError as exc:  # no emulator here
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(done.returncode if done.returncode >= 0 else 128 - done.returncode)


if __name__ == "__main__":
    main()
