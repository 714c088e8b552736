"""Benchmark: the front-end graph (frontend.onnx) against the numpy front-end, per 30 s of audio.

Both compute the same features (the export gate holds them within 1e-4; measured 0 here in float64). The
script times each on the same 30 s of real speech, interleaved with a gap so one side's idle worker
threads do not share the cores with the other, at 1 and 2 threads, and prints ms per 30 s, the ratio
and the error, for the graph as exported (float64 inside) and for a float32-inside build. The thread
count is onnxruntime's; numpy's FFT is single-threaded and its mel matmul uses its BLAS's default threads.
A benchmark, never a test.

    python bench/frontend.py --bundle out/tiny --json bench/results/frontend.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantise_full import machine_facts  # noqa: E402

from granite_onnx.export.frontend import build_frontend  # noqa: E402
from granite_onnx.runtime.audio import load_audio  # noqa: E402
from granite_onnx.runtime.bundle import bundle_features  # noqa: E402
from granite_onnx.runtime.features import log_mel  # noqa: E402
from granite_onnx.runtime.frontend import pad_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GAP_S = 0.1  # onnxruntime's workers spin ~40 ms after a run (FACTS.md): let them settle before the next


def thirty_seconds(rate: int) -> np.ndarray:
    """30.0 s of real speech: the repo's clips end to end, cut at 30 s."""
    clips = sorted((REPO / "clips").glob("*.flac"))
    audio = np.concatenate([load_audio(c, rate) for c in clips])
    return audio[: 30 * rate]


def session(model_or_path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per function, the functions taking turns."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(GAP_S)
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "out" / "tiny")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = bundle_features(args.bundle)
    audio = thirty_seconds(cfg.sampling_rate)
    waveform, num_samples = pad_batch([audio])
    feeds = {"waveform": waveform, "num_samples": num_samples}
    want = log_mel(audio, cfg)
    result = {"machine": machine_facts(2), "audio_s": len(audio) / cfg.sampling_rate, "runs": []}
    for threads in (1, 2):
        graphs = {
            "frontend.onnx (float64 inside)": session(str(args.bundle / "frontend.onnx"), threads),
            "float32 inside": session(build_frontend(cfg, "float32"), threads),
        }
        fns = {"numpy": lambda: log_mel(audio, cfg)}
        fns |= {name: (lambda s=s: s.run(None, feeds)) for name, s in graphs.items()}
        best = interleaved(fns, args.repeats)
        for name, seconds in best.items():
            got = want if name == "numpy" else graphs[name].run(None, feeds)[0][0]
            row = {
                "front_end": name,
                "threads": threads,
                "ms_per_30s": round(1000 * seconds * 30 / result["audio_s"], 2),
                "vs_numpy": round(seconds / best["numpy"], 3),
                "max_abs_error_vs_numpy": float(np.max(np.abs(got - want))),
            }
            result["runs"].append(row)
            print(
                f"{threads} thread(s)  {name:32s} {row['ms_per_30s']:8.2f} ms per 30 s  "
                f"{row['vs_numpy']:6.3f}x numpy  max abs error {row['max_abs_error_vs_numpy']:.2e}"
            )
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    machine = result["machine"]
    flags = " ".join(machine["cpu_kernels"]["features"])
    print(f"peak RSS {result['peak_rss_mib']} MiB; CPU {machine['cpu']} ({flags})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
