"""Benchmark: parity of the trained fixture's held-out set, read as a local Hugging Face dataset, with
``--jobs 1``, ``--jobs 2`` and a 2-worker local Ray cluster, side by side in one run: the reports must be
identical, and each run's wall time gives the per-clip cost behind the README's dataset-scale projection.

The held-out clips and their transcripts are written as a ``save_to_disk`` dataset (audio bytes, text);
``parity --dataset`` then reads it back as a clip set, as a user's LibriSpeech folder would be.

    python bench/parity_executors.py --bundle out/trained --json bench/results/parity_executors_trained.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from quantise_full import machine_facts  # noqa: E402


def saved_dataset(clips: Path, out: Path) -> Path:
    """``clips`` (a folder with manifest.json) as a DatasetDict with one ``test`` split, saved to ``out``."""
    import datasets

    rows = json.loads((clips / "manifest.json").read_text())["clips"]
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"audio": struct, "text": datasets.Value("string")})
    table = {
        "audio": [{"bytes": (clips / r["file"]).read_bytes(), "path": r["file"]} for r in rows],
        "text": [r["transcript"] for r in rows],
    }
    split = datasets.Dataset.from_dict(table, features=features).cast_column(
        "audio", datasets.Audio(decode=False)
    )
    datasets.DatasetDict({"test": split}).save_to_disk(str(out))
    return out


def differences(a, b, path: str = "") -> list[str]:
    """Where two report documents differ (JSON paths), for a run that is not identical."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {str(a)[:60]!r} != {str(b)[:60]!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("out/trained"))
    parser.add_argument("--clips", type=Path, default=Path("synthetic/heldout"))
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from granite_onnx.checkpoint import CheckpointSource
    from granite_onnx.parity.datasets import DatasetSpec, write_clips
    from granite_onnx.parity.harness import ParityOptions, run_parity

    assets = HERE.parent / "src" / "granite_onnx" / "assets" / "trained"
    checkpoint = CheckpointSource(assets, model_id="trained", is_fixture=True)
    runs = {"jobs 1": {}, "jobs 2": {"jobs": 2}, "ray 2 workers": {"executor": "ray", "jobs": 2}}
    result = {"machine": machine_facts(2), "bundle": str(args.bundle), "runs": {}}
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = saved_dataset(args.clips, Path(tmp) / "heldout-dataset")
        written = write_clips(DatasetSpec(str(dataset)), Path(tmp) / "heldout")
        for name, extra in runs.items():
            options = ParityOptions(max_new_tokens=args.max_new_tokens, wer_limit=0.01, **extra)
            start = time.perf_counter()
            reports[name] = run_parity(args.bundle, checkpoint, [written.folder], options).to_json()
            seconds = time.perf_counter() - start
            clips = len(reports[name]["multi_clip_parity"])
            result["runs"][name] = {
                "seconds": round(seconds, 1),
                "clips": clips,
                "s_per_clip": seconds / clips,
            }
            print(f"{name}: {seconds:.1f} s for {clips} clips", flush=True)
    first = reports["jobs 1"]
    result["identical_to_jobs_1"] = {name: report == first for name, report in reports.items()}
    result["differences"] = {name: differences(first, report)[:20] for name, report in reports.items()}
    result["tiers"] = list(first["tiers"])
    audio_s = sum(c["duration_s"] for c in first["multi_clip_parity"])
    result["audio_seconds"] = round(audio_s, 1)
    for run in result["runs"].values():
        run["s_per_audio_s"] = run["seconds"] / audio_s
    print(json.dumps(result["identical_to_jobs_1"]), json.dumps(result["differences"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
