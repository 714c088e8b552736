"""Ray as parity's executor (``parity --executor ray [--address ADDR]``).

Each worker is a Ray actor that opens the bundle's pipelines and the PyTorch reference model once, then
measures one clip per task; the task carries the clip's audio bytes, so workers need the bundle and the
checkpoint by path but not the clips. Actors restart when their process dies and their unfinished task
runs again (``max_restarts`` / ``max_task_retries`` unbounded), so a killed worker loses nothing. The
driver keeps one task in flight per actor, saves each result as it arrives (:class:`~.store.ClipStore`: a
restarted run does only the rest), reports progress for the whole cluster through one callback, and
returns the results in clip order: the report equals ``--jobs 1``'s.

Ray is an optional extra (``granite-onnx[cluster]``). Without ``--address`` a local cluster of ``workers``
CPUs is started and stopped; with it, the run joins that cluster and leaves it running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import GraniteOnnxError
from ..userfiles import one_line
from .clips import Clip
from .report import ClipParity
from .store import ClipStore

INSTALL = "pip install 'granite-onnx[cluster]'"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise GraniteOnnxError(f"parity --executor ray needs Ray, which is not installed: {INSTALL}") from exc
    return ray


class ParityWorker:
    """A Ray actor's state: one parity context (pipelines and reference model), opened once.

    Ray gives an actor of one CPU ``OMP_NUM_THREADS=1``, and PyTorch with one thread sums in another order:
    measured on the trained fixture, 3 of 48 clips then moved a PyTorch margin in its 4th decimal. The actor
    takes the driver's PyTorch thread count instead, so its report equals ``--jobs 1``'s on the same machine.
    """

    def __init__(self, torch_threads: int, *context_args):
        import torch

        from .harness import _Context

        torch.set_num_threads(torch_threads)
        self.context = _Context(*context_args)

    def run(self, clip: Clip, audio: bytes) -> ClipParity:
        """``clip`` measured from ``audio``, its file's bytes sent by the driver: the worker needs no view
        of the driver's clip folder (a --dataset folder is a temporary one on the driver)."""
        import dataclasses
        import tempfile

        from .harness import clip_parity

        with tempfile.TemporaryDirectory(prefix="granite-clip-") as tmp:
            local = Path(tmp) / clip.name
            local.write_bytes(audio)
            return clip_parity(self.context, dataclasses.replace(clip, path=local))

    def pid(self) -> int:
        import os

        return os.getpid()


def run_on_ray(
    context_args: tuple,
    clips: Sequence[Clip],
    workers: int,
    store: ClipStore | None,
    tick: Callable[[int, int, str], None],
    address: str | None = None,
    on_start: Callable[[list], None] | None = None,
    worker_cpus: int = 1,
) -> list[ClipParity]:
    """Every clip's parity on ``workers`` Ray actors, in clip order. Each actor reserves ``worker_cpus``
    CPUs (on a cluster of 16-core machines, 16 places one actor per machine). ``on_start`` receives the
    actors (the fault test kills one mid-run)."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * worker_cpus, include_dashboard=False, log_to_driver=False)
        except Exception as exc:  # no cluster at the address, ports taken, ...
            raise GraniteOnnxError(f"cannot start or join a Ray cluster: {one_line(exc, 200)}") from exc
        started = True
    try:
        done = store.load() if store else {}
        done = {name: clip for name, clip in done.items() if name in {c.name for c in clips}}
        queue = [c for c in clips if c.name not in done]
        tick(len(done), len(clips), f"{len(done)} clips kept from an earlier run" if done else "starting")
        if queue:
            import torch

            threads = torch.get_num_threads()  # the driver's (see ParityWorker)
            actor = ray.remote(max_restarts=-1, max_task_retries=-1)(ParityWorker)
            count = min(workers, len(queue))
            actors = [
                actor.options(num_cpus=worker_cpus).remote(threads, *context_args) for _ in range(count)
            ]
            if on_start:
                on_start(actors)
            pending = {}
            for worker in actors:
                if queue:
                    clip = queue.pop(0)
                    pending[worker.run.remote(clip, clip.path.read_bytes())] = (worker, clip)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                worker, clip = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # the clip itself failed (not a lost worker: those are retried)
                    raise GraniteOnnxError(
                        f"parity of {clip.name} failed on Ray: {one_line(exc, 200)}"
                    ) from exc
                if store:
                    store.save(result)
                done[clip.name] = result
                tick(len(done), len(clips), clip.name)
                if queue:
                    nxt = queue.pop(0)
                    pending[worker.run.remote(nxt, nxt.path.read_bytes())] = (worker, nxt)
            for worker in actors:
                ray.kill(worker)
        return [done[c.name] for c in clips]
    finally:
        if started:
            ray.shutdown()
