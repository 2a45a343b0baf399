"""`cxrsweep segment` on Ray Data: the stages of `sweep.engine.segment` as a streaming pipeline.

    from_items(paths) -> map_batches(read_batch)           tasks, 1 CPU each: decode + prepare (the
                                                           checkpoint's size and content crop)
                      -> map_batches(BatchModel)           an actor pool; each holds the network
                                                           (on a GPU with --gpus-per-worker)
                      -> map_batches(encode_batch)         tasks: masks in the full frame, stats, PNGs
                      -> iter_batches on the driver        SegmentOutput writes PNGs and rows

Without GPUs the three stages run inside each actor (`_WholeJobWorker`, one per
`--cpus-per-worker` CPUs): on CPUs alone the hand-over between stages costs more than it buys
(benchmarks/bench_segment.py).

The same code runs on one CPU, one GPU or a cluster. Workers read the inputs and the
checkpoint by path (on a cluster: a shared file system); the PNGs come back to the driver, so
OUT need only exist where the command runs.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import ray

from sweep.engine.segment import (BatchModel, CheckpointInfo, ImageItem, Progress, SegmentOutput, encode_batch,
                                  read_batch)

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    address: str | None = None  # None: start a Ray runtime here (or use the one already initialised)
    batch_size: int = 16
    workers: int = 0  # model actors; 0: one per GPU share, or per `cpus_per_worker` CPUs when there are none
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # Separate read / network / encode stages (the network on its own actors); None: with GPUs
    # only. On CPUs alone one actor doing all three is faster (benchmarks/bench_segment.py).
    staged: bool | None = None


class _WholeJobWorker(BatchModel):
    """On CPUs only: read, network and encode in one actor, so no stage waits on another's
    transfers; the actors, one per `cpus_per_worker` CPUs, run side by side."""

    def __init__(self, checkpoint: str, sha256: str, threads: int, info: CheckpointInfo, overlays: str):
        super().__init__(checkpoint, sha256, device="cpu", threads=threads)
        self.info, self.overlays = info, overlays

    def __call__(self, batch):
        return encode_batch(super().__call__(read_batch(batch, self.info)), self.info, self.overlays)


def worker_count(options: RayOptions, cluster: dict) -> int:
    """Model actors to start: as asked, else one per GPU share, else one per `cpus_per_worker` CPUs."""
    if options.workers > 0:
        return options.workers
    if options.gpus_per_worker > 0:
        return max(1, int(float(cluster.get("GPU", 0)) / options.gpus_per_worker))
    return max(1, int(float(cluster.get("CPU", 1)) / options.cpus_per_worker))


def segment_with_ray(items: Sequence[ImageItem], output: SegmentOutput, checkpoint: str | Path,
                     options: RayOptions, overlays: str = "flagged", progress: Progress | None = None) -> None:
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
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver prints its own progress lines
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the execution plan and such go to Ray's log files
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we said so
    info: CheckpointInfo = output.info
    cluster = ray.cluster_resources()
    if options.gpus_per_worker > 0 and not cluster.get("GPU"):
        raise ValueError(f"--gpus-per-worker {options.gpus_per_worker:g}: the Ray cluster has no GPU")
    workers = worker_count(options, cluster)
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    threads = max(1, int(options.cpus_per_worker))
    dataset = ray.data.from_items([asdict(item) for item in items],
                                  override_num_blocks=max(1, min(len(items), 4 * workers * 4)))
    path = str(Path(checkpoint).resolve())
    staged = options.gpus_per_worker > 0 if options.staged is None else options.staged
    log.info("segment on Ray: %d image(s), %d model worker(s) on %s, batches of %d, %s", len(items), workers, device,
             options.batch_size, "read / network / encode stages" if staged else "each worker reads, segments, encodes")
    if not staged:
        dataset = dataset.map_batches(
            _WholeJobWorker, fn_constructor_args=(path, info.sha256, threads, info, overlays),
            batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=options.cpus_per_worker)
    else:
        # The network on its own actors (GPUs); reading and encoding as CPU tasks around them.
        dataset = dataset.map_batches(read_batch, fn_kwargs={"info": info},
                                      batch_size=options.batch_size, batch_format="numpy", num_cpus=1)
        dataset = dataset.map_batches(
            BatchModel, fn_constructor_args=(path, info.sha256, device, threads), batch_size=options.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None)
        dataset = dataset.map_batches(encode_batch, fn_kwargs={"info": info, "overlays": overlays},
                                      batch_size=options.batch_size, batch_format="numpy", num_cpus=1)
    for columns in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        rows = output.record(columns)
        if progress is not None:
            progress.update(rows)
