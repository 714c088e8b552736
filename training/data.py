"""Build (or reuse) the synthetic training and held-out sets: ``python -m training.data``.

Sets are cached under ``$GRANITE_ONNX_CACHE/trained-data/<hash>/`` keyed by the recipe, so a re-run
costs nothing. ``--workers`` speaks shards in parallel processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from granite_onnx.fixtures import cache_root

from .corpus import sentences
from .synth import Utterance, load_set, save_set, synthesise, voice_versions


@dataclass(frozen=True)
class DataRecipe:
    train_sentences: int = 6000
    heldout_sentences: int = 48
    train_seed: int = 1
    heldout_seed: int = 2
    voice_seed: int = 3

    def texts(self) -> tuple[list[str], list[str]]:
        train = sentences(self.train_sentences, self.train_seed)
        heldout = sentences(self.heldout_sentences, self.heldout_seed, exclude=frozenset(train))
        return train, heldout

    def folder(self) -> Path:
        key = json.dumps({"recipe": asdict(self), "voice": voice_versions()}, sort_keys=True)
        return cache_root() / "trained-data" / hashlib.sha256(key.encode()).hexdigest()[:12]


def _shard(args: tuple[list[str], int]) -> list[Utterance]:
    texts, seed = args
    return synthesise(texts, seed)


def build(recipe: DataRecipe, workers: int = 2) -> dict[str, list[Utterance]]:
    folder = recipe.folder()
    sets = {}
    train, heldout = recipe.texts()
    for name, texts, seed in (
        ("train", train, recipe.voice_seed),
        ("heldout", heldout, recipe.voice_seed + 1),
    ):
        path = folder / f"{name}.npz"
        if path.is_file():
            sets[name] = load_set(path)
            continue
        shards = [(texts[i::workers], seed * 100 + i) for i in range(workers)]
        with cf.ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_shard, shards))
        merged = [None] * len(texts)
        for i, part in enumerate(parts):
            merged[i::workers] = part
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp.npz"
        save_set(tmp, merged)
        tmp.replace(path)
        sets[name] = merged
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    recipe = DataRecipe()
    sets = build(recipe, args.workers)
    for name, utts in sets.items():
        seconds = sum(len(u.audio) for u in utts) / 16000
        print(f"{name}: {len(utts)} utterances, {seconds / 60:.1f} min, in {recipe.folder()}")


if __name__ == "__main__":
    main()
