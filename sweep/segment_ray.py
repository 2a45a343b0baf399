"""`cxrsweep segment` on Ray: the stages of `inference.stages`, fed batch by batch from the
driver to model workers that load the checkpoint themselves.

    CPUs only (default)   each batch is one Ray task that reads, segments and encodes it
                          (`segment_batch`) in one of the runtime's pooled worker processes, which
                          keeps the network loaded for the next batch (`_cached_worker`): on CPUs
                          the hand-over between stages costs more than it buys, and a pooled
                          process is up already where a new actor's would take seconds to start
                          (benchmarks/bench_segment.py)
    --gpus-per-worker     read and encode as CPU tasks, the network on GPU actors (one per GPU
                          share); each batch is the chain read task -> actor -> encode task

Nothing a restart needs lives only in the object store (the limitation of Ray Data's actor
pools, whose constructor arguments live there: ray-project/ray#53727): a task or actor receives
the checkpoint's path and plain values, never the weights. A worker that dies (a node lost, a
process killed) has its batch retried (`TASK_RETRIES`) elsewhere, which loads the network from
the path again; a dead actor is restarted (`WORKER_RESTARTS`). Workers return a batch's rows and
PNG bytes; the driver (`SegmentOutput.record`) writes each file atomically and records each
image's row once, when its batch's result arrives, so a retried batch yields one row per image
and no half-written file.

The same code runs on one CPU, one GPU or a cluster. Workers read the inputs and the
checkpoint by path (on a cluster: a shared file system); the PNGs come back to the driver, so
OUT need only exist where the command runs. Ray's own messages go to OUT/logs/ray.log
(`sweep.progress.ray_console_to`).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import ray

from errors import UserError
from inference.inputs import ImageItem, batches, item_columns
from inference.local import Progress
from inference.output import SegmentOutput
from inference.stages import BatchModel, CheckpointInfo, encode_batch, read_batch, segment_batch
from sweep import failpoints

log = logging.getLogger(__name__)

# A batch whose worker dies is retried this many times (where it runs again, the network is
# loaded from the checkpoint's path); a GPU actor that dies is started again as often.
WORKER_RESTARTS = 3
TASK_RETRIES = 3
# Batches queued per worker: one running, one waiting, so a worker never idles on the driver.
BATCHES_PER_WORKER = 2


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray runtime here (or use the one already initialised)
    batch_size: int = 16
    workers: int = 0  # model workers; 0: one per GPU share, or per `cpus_per_worker` CPUs when there are none
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # Separate read / network / encode stages (the network on its own workers); None: with GPUs
    # only. On CPUs alone one worker doing all three is faster (benchmarks/bench_segment.py).
    staged: bool | None = None


class SegmentWorker:
    """A model worker: the checkpoint's network, loaded from its path here, so a restarted worker
    needs nothing but its constructor's plain arguments. A GPU actor, or held by a CPU worker
    process between its tasks (`_cached_worker`)."""

    def __init__(self, checkpoint: str, sha256: str, device: str, threads: int, info: CheckpointInfo,
                 overlays: str, exit_marker: str | None = None):
        self.model = BatchModel(checkpoint, sha256, device=device, threads=threads)
        self.info, self.overlays = info, overlays
        self.exit_marker = exit_marker  # FAILPOINTS.exit_segment_worker_once, armed in the driver
        self.calls = 0

    def segment(self, items: list[ImageItem]) -> dict:
        """The whole job of one batch: read, network, encode (CPUs only)."""
        columns = segment_batch(item_columns(items), self.info, self.model, self.overlays)
        self._hook()
        return columns

    def network(self, batch: dict) -> dict:
        """The network stage of one batch (GPU path)."""
        columns = self.model(batch)
        self._hook()
        return columns

    def _hook(self) -> None:
        self.calls += 1
        failpoints.after_segment_batch(self.calls, self.exit_marker)


_workers: dict[tuple, SegmentWorker] = {}  # in a worker process: its network, kept between tasks


def _cached_worker(*arguments) -> SegmentWorker:
    if arguments not in _workers:
        _workers.clear()  # another job's network
        _workers[arguments] = SegmentWorker(*arguments)
    return _workers[arguments]


def _segment_task(arguments: tuple, items: list[ImageItem]) -> dict:
    """A CPU task: one batch read, segmented and encoded by this process's network."""
    return _cached_worker(*arguments).segment(items)


def worker_count(options: RayOptions, cluster: dict) -> int:
    """Model workers to start: as asked, else one per GPU share, else one per `cpus_per_worker` CPUs."""
    if options.workers > 0:
        return options.workers
    if options.gpus_per_worker > 0:
        return max(1, int(float(cluster.get("GPU", 0)) / options.gpus_per_worker))
    return max(1, int(float(cluster.get("CPU", 1)) / options.cpus_per_worker))


def worker_threads(options: RayOptions, workers: int, cluster_cpus: float, node_cpus: float) -> int:
    """torch threads of each CPU model worker: its share of the cluster's cores (at most one node's),
    and at least its `cpus_per_worker`; more threads than cores slow every worker down."""
    share = min(node_cpus, cluster_cpus / max(1, workers))
    return max(1, int(options.cpus_per_worker), int(share))


def segment_with_ray(items: Sequence[ImageItem], output: SegmentOutput, checkpoint: str | Path,
                     options: RayOptions, overlays: str = "flagged", progress: Progress | None = None) -> None:
    """Segment `items` into `output` on Ray: the runtime at `options.address`, the one already
    initialised in this process, or a local one started (and stopped) here. Ray's own messages
    go to OUT/logs/ray.log, never to the console (`ray_console_to`)."""
    # Here, not at the top: the workers import this module, and sweep.progress imports Ray Tune
    # (a second of each worker's start).
    from sweep.progress import RAY_LOG, ray_console_to

    path = output.out.joinpath(*RAY_LOG)
    log.info("segment: Ray's own messages go to %s", path)
    with ray_console_to(path):
        started_here = not ray.is_initialized()
        if started_here:
            kwargs = {"include_dashboard": False, "log_to_driver": False}
            if options.address:
                kwargs["address"] = options.address
            ray.init(**kwargs)
        try:
            _run(items, output, checkpoint, options, overlays, progress)
        finally:
            if started_here:
                ray.shutdown()


def _run(items, output: SegmentOutput, checkpoint: str | Path, options: RayOptions, overlays: str,
         progress: Progress | None) -> None:
    info: CheckpointInfo = output.info
    cluster = ray.cluster_resources()
    if options.gpus_per_worker > 0 and not cluster.get("GPU"):
        raise UserError(f"--gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has no GPU")
    workers = worker_count(options, cluster)
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    node_cpus = max([float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1.0])
    threads = worker_threads(options, workers, float(cluster.get("CPU", 1)), node_cpus)
    staged = options.gpus_per_worker > 0 if options.staged is None else options.staged
    log.info("segment on Ray: %d image(s), %d model worker(s) on %s (%d torch thread(s) each), batches of %d, %s",
             len(items), workers, device, threads, options.batch_size,
             "read / network / encode stages" if staged else "each worker reads, segments, encodes")
    arguments = (str(Path(checkpoint).resolve()), info.sha256, device, threads, info, overlays,
                 failpoints.FAILPOINTS.segment_exit_marker)
    if staged:
        actor = ray.remote(SegmentWorker).options(
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None, max_restarts=WORKER_RESTARTS,
            max_task_retries=TASK_RETRIES)
        pool = [actor.remote(*arguments) for _ in range(workers)]
        read = ray.remote(read_batch).options(num_cpus=1, max_retries=TASK_RETRIES)
        encode = ray.remote(encode_batch).options(num_cpus=1, max_retries=TASK_RETRIES)
        turn = 0

        def submit(chunk: list[ImageItem]):
            nonlocal turn
            worker, turn = pool[turn % workers], turn + 1  # in turn: every batch costs the network the same
            return encode.remote(worker.network.remote(read.remote(item_columns(chunk), info)), info, overlays)
    else:
        pool = []
        # As many CPUs as the worker's torch threads, so Ray runs no more tasks at once than there
        # are cores for them.
        task = ray.remote(_segment_task).options(num_cpus=max(options.cpus_per_worker, threads),
                                                 max_retries=TASK_RETRIES)

        def submit(chunk: list[ImageItem]):
            return task.remote(arguments, chunk)

    todo = deque(batches(items, options.batch_size))
    running: list = []
    try:
        while todo or running:
            while todo and len(running) < BATCHES_PER_WORKER * workers:
                running.append(submit(todo.popleft()))
            done, running = ray.wait(running, num_returns=1)
            for ref in done:
                rows = output.record(ray.get(ref))
                if progress is not None:
                    progress.update(rows)
    finally:
        for worker in pool:
            ray.kill(worker)
