"""The quantised tiers as another CPU computes them: ONNX only, natively or under an emulated older CPU.

A VNNI machine never runs the saturating AVX2 integer kernel, so it cannot see what an AVX2 consumer gets.
Debian's ``qemu-user`` can show it: ``qemu-x86_64 -cpu Haswell python ...`` runs this machine's own
onnxruntime with AVX2 and no AVX-512 or VNNI, and onnxruntime then picks the AVX2 kernels (the probe in
:mod:`.cpu` saturates there). PyTorch crashes under that emulation, so this check is torch-free: each tier
is measured against the bundle's FP32 graphs (which parity holds byte-exact with PyTorch), on the
encoder output, the first logits and the greedy transcripts.

``python -m granite_onnx.runtime.crosscheck --bundle B --tier T ... CLIP ...`` prints the JSON record.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import load_audio
from .cpu import current_cpu
from .features import audio_token_count, log_mel, min_audio_samples
from .pipeline import SpeechPipeline

# AVX2, FMA; no AVX-512, no VNNI: the saturating kernel family. The features qemu's TCG cannot provide
# anyway are switched off, so that it does not warn about each of them at every start.
EMULATED_CPU = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
# PyTorch picks its kernels from the host's CPUID through its own libraries and crashes under the emulator
# unless told to stay at AVX2 (then parity itself runs there: `make emulated-avx2`).
TORCH_AT_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@dataclass(frozen=True)
class TierMeasure:
    tier: str
    encoder_max_abs: float  # against the FP32 encoder, on the first clip
    logits_max_abs: float  # first logits of prompt_encode, against FP32's
    token_ids: tuple[tuple[int, ...], ...]  # greedy tokens per clip


def _clip_inputs(pipe: SpeechPipeline, path: Path) -> tuple[np.ndarray, np.ndarray]:
    cfg = pipe.bundle.features
    audio = load_audio(path, cfg.sampling_rate, min_samples=min_audio_samples(cfg))
    return log_mel(audio, cfg)[None], pipe.prompt_ids(audio_token_count(len(audio), cfg))


def measure(
    bundle: Path, tiers: Sequence[str], clips: Sequence[Path], max_new_tokens: int = 64, threads: int = 1
) -> dict:
    """Every tier of ``tiers`` (and FP32) on ``clips``, in this process, with this CPU's record."""
    fp32 = SpeechPipeline(bundle, None, threads)
    inputs = [_clip_inputs(fp32, Path(c)) for c in clips]
    features, ids = inputs[0]
    ref_embeds = fp32.audio_embeds(features)
    ref_logits, _ = fp32.prompt(ids, ref_embeds)
    results = {}
    for tier in (None, *tiers):
        pipe = fp32 if tier is None else SpeechPipeline(bundle, tier, threads)
        embeds = pipe.audio_embeds(features)
        logits, _ = pipe.prompt(ids, ref_embeds)  # same audio embeddings: the LLM graph's own error
        tokens = tuple(pipe.generate(i, pipe.audio_embeds(f), max_new_tokens).token_ids for f, i in inputs)
        name = tier or "fp32"
        results[name] = TierMeasure(
            name,
            float(np.abs(embeds - ref_embeds).max()),
            float(np.abs(logits - ref_logits).max()),
            tokens,
        )
    record = {
        "cpu": current_cpu().to_json(),
        "clips": [Path(c).name for c in clips],
        "max_new_tokens": max_new_tokens,
        "tiers": {k: asdict(v) for k, v in results.items()},
    }
    return json.loads(json.dumps(record))  # plain JSON types, as measure_emulated returns it


def qemu() -> str | None:
    """The qemu-user binary that can emulate an AVX2-only x86-64 here, or None (not installed, not x86)."""
    return shutil.which("qemu-x86_64") if platform.machine() in ("x86_64", "AMD64") else None


def run_emulated(
    python_args: Sequence[str],
    cpu: str = EMULATED_CPU,
    timeout: float | None = 1800,
    attempts: int = 3,
    capture: bool = True,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python python_args...`` under ``qemu-x86_64 -cpu {cpu}``.

    qemu-user itself crashes now and then (SIGSEGV inside the emulator: about once in ten long runs,
    never in the same place twice); the programs run here are deterministic and every granite-onnx stage
    writes into a temporary folder first, so a death by signal is retried, up to ``attempts`` runs. With
    ``check``, any other failure raises RuntimeError with the last lines of stderr (``capture``: keep
    the output instead of passing it through)."""
    binary = qemu()
    if binary is None:
        raise RuntimeError(
            "qemu-x86_64 is not installed (Debian: apt-get install qemu-user) or this is not x86-64"
        )
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **TORCH_AT_AVX2)
    command = [binary, "-cpu", cpu, sys.executable, *python_args]
    for attempt in range(1, attempts + 1):
        done = subprocess.run(command, capture_output=capture, text=True, timeout=timeout, env=env)
        if done.returncode >= 0 or attempt == attempts:
            break
        print(
            f"qemu-x86_64 died of signal {-done.returncode}: run {attempt + 1} of {attempts}", file=sys.stderr
        )
    if check and done.returncode != 0:
        tail = [line for line in (done.stderr or "").splitlines() if "TCG doesn't support" not in line][-5:]
        raise RuntimeError(f"emulated run failed ({done.returncode}, attempt {attempt}): {' | '.join(tail)}")
    return done


def measure_emulated(
    bundle: Path,
    tiers: Sequence[str],
    clips: Sequence[Path],
    max_new_tokens: int = 64,
    cpu: str = EMULATED_CPU,
    timeout: float = 1800,
) -> dict:
    """:func:`measure` in a child process under ``qemu-x86_64 -cpu {cpu}`` (about 17x slower)."""
    args = ["-m", "granite_onnx.runtime.crosscheck", "--bundle", str(bundle)]
    args += [a for t in tiers for a in ("--tier", t)] + ["--max-new-tokens", str(max_new_tokens)]
    done = run_emulated([*args, *(str(c) for c in clips)], cpu, timeout)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["emulator"] = {"qemu": qemu(), "cpu": cpu}
    return record


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--tier", action="append", default=[])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("clips", nargs="+", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bundle, args.tier, args.clips, args.max_new_tokens)), flush=True)
    # qemu-user has been seen to crash while onnxruntime's sessions are torn down at exit (after the
    # record was complete): the record is written, so leave without that teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
