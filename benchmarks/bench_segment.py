"""Images per second of `cxrsweep segment` on Ray (its pool of model workers) against the plain
single-process loop (`--local`), on the same phantoms, on this machine, and where the time goes.

Both paths run the same stages (`inference.stages.segment_batch`: read + prepare with the
content crop, network, mask placed in the full frame + statistics + PNG encoding) and write into
fresh output folders; the masks are compared (the loop's torch uses every core, each Ray worker
its share of them, so a boundary pixel may differ). The Ray figure is given without and with
starting the local Ray runtime (a cluster's runtime is already up). The breakdown gives each
stage's milliseconds per image as measured where it ran (on Ray: inside the workers, summed
over them), the driver's writing, and the rest of the cores' time ("not in a stage": start of
the workers, hand-over, idle cores). The network is a U-Net of the `cpu` profile (128 px, width
0.25, content crop on) with random weights (speed does not depend on training), or `--checkpoint`.

    python benchmarks/bench_segment.py                         # 1,000 phantoms, 512 px long side
    python benchmarks/bench_segment.py --n 200 --workers 2 --batch-size 8

On a shared machine, run it alone (e.g. under a CPU lock) and say how many cores it had.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def make_checkpoint(path: Path, profile: str) -> Path:
    import torch

    from engine.data.segmentation import PER_IMAGE_STANDARDISATION
    from engine.runtime.checkpoints import foreground_range, network_checkpoint, save_atomic
    from engine.supervised import arch_kwargs
    from models.registry import build_segmenter
    from protocol.config import make_config

    cfg = make_config(profile)
    torch.manual_seed(0)
    model = build_segmenter("unet", **arch_kwargs(cfg))
    # A training range as a real checkpoint has one, so QC runs as in use.
    masks = [np.zeros((1, 4, 4), np.uint8) + np.array([[0, 1, 1, 0]] * 4, np.uint8)]
    save_atomic(network_checkpoint(model, "unet", arch_kwargs(cfg), cfg.to_dict(), "lungs", cfg.image_size,
                                   PER_IMAGE_STANDARDISATION, 0, crop_borders=cfg.crop_borders,
                                   train_foreground_range=foreground_range(masks)), path)
    return path


def phantom_folder(root: Path, n: int, size: int) -> Path:
    from data_io.phantoms import synthesize

    marker = root / f"phantoms-{n}-{size}.done"
    folder = root / "montgomery" / "CXR_png"
    if not marker.exists():
        started = time.perf_counter()
        synthesize(root, n_source=1, n_target=n, source_size=64, target_size=size, seed=0)
        marker.write_text("ok\n")
        print(f"synthesised {n} phantoms ({size} px long side) in {time.perf_counter() - started:.0f} s")
    return folder


class TimedOutput:
    """A SegmentOutput that adds up the stage seconds its batches carry and its own writing time."""

    def __init__(self, out: Path, info, checkpoint: Path):
        from inference.output import SegmentOutput
        from inference.stages import STAGE_COLUMNS

        self.output, self.stages = SegmentOutput(out, info, checkpoint), dict.fromkeys(STAGE_COLUMNS, 0.0)
        self.stages["write_s"] = 0.0
        self.started, self.first_s = time.perf_counter(), None

    def __getattr__(self, name):
        return getattr(self.output, name)

    def record(self, columns):
        started = time.perf_counter()
        if self.first_s is None:
            self.first_s = started - self.started  # the workers' start (imports, the checkpoint) and one batch
        rows = self.output.record(columns)
        self.stages["write_s"] += time.perf_counter() - started
        for name in self.stages:
            if name in columns:
                self.stages[name] += float(sum(columns[name]))
        return rows


def run_local(items, out: Path, checkpoint: Path, info, batch_size: int,
              overlays: str) -> tuple[float, dict, float]:
    from inference.local import segment_local

    started = time.perf_counter()
    output = TimedOutput(out, info, checkpoint)
    segment_local(items, output, checkpoint, device="cpu", batch_size=batch_size, overlays=overlays)
    output.gather()
    return time.perf_counter() - started, output.stages, output.first_s


def run_ray(items, out: Path, checkpoint: Path, info, options,
            overlays: str) -> tuple[float, float, dict, float]:
    import ray

    from sweep.progress import ray_console_to
    from sweep.segment_ray import segment_with_ray

    started = time.perf_counter()
    with ray_console_to(out.parent / "ray-start.log"):
        ray.init(include_dashboard=False, log_to_driver=False)
        # Up: its worker processes can run a task (they boot after ray.init returns).
        ray.get([ray.remote(num_cpus=1)(lambda: None).remote() for _ in range(int(ray.cluster_resources()["CPU"]))])
    up = time.perf_counter() - started
    try:
        started = time.perf_counter()
        output = TimedOutput(out, info, checkpoint)
        segment_with_ray(items, output, checkpoint, options, overlays=overlays)
        output.gather()
        return up, time.perf_counter() - started, output.stages, output.first_s
    finally:
        ray.shutdown()


def breakdown(name: str, stages: dict, wall_s: float, n: int, processes: int, first_s: float) -> str:
    """Milliseconds per image of each stage, as measured in the process that ran it (added up over
    the `processes` that ran side by side), and the processes' time in none of them: waiting for
    work, their start (imports, the checkpoint), hand-over."""
    per_image = {key: 1000 * value / n for key, value in stages.items()}
    rest = 1000 * wall_s * processes / n - sum(per_image.values())
    return (f"{name}: read {per_image['read_s']:.1f} | network {per_image['network_s']:.1f} | "
            f"encode {per_image['encode_s']:.1f} | write {per_image['write_s']:.1f} (driver) | in no stage {rest:.1f} "
            f"ms per image, over {processes} process(es) x {1000 * wall_s / n:.1f} ms wall per image; "
            f"first batch back after {first_s:.1f} s")


def ray_shape(options) -> tuple[int, int]:
    """(model workers, torch threads each) the Ray path starts here (sweep.segment_ray's rules)."""
    from sweep.segment_ray import worker_count, worker_threads

    cpus = float(os.cpu_count() or 1)
    workers = worker_count(options, {"CPU": cpus})
    return workers, worker_threads(options, workers, cpus, cpus)


def mask_differences(first: Path, second: Path) -> tuple[int, int, int]:
    """(images compared, images whose masks differ, pixels that differ)."""
    names = sorted(p.relative_to(first) for p in (first / "masks").rglob("*.png"))
    if names != sorted(p.relative_to(second) for p in (second / "masks").rglob("*.png")):
        raise SystemExit("the two paths wrote different sets of masks")
    counts = [int((np.asarray(Image.open(first / n)) != np.asarray(Image.open(second / n))).sum()) for n in names]
    return len(names), sum(c > 0 for c in counts), sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="phantom radiographs (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="their long side in px (default 512)")
    parser.add_argument("--profile", default="cpu", help="profile of the random U-Net (default cpu: 128 px)")
    parser.add_argument("--checkpoint", type=Path, help="a real checkpoint instead of the random U-Net")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="Ray model workers (default: the CLI's rule)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--overlays", default="none", choices=("none", "flagged", "all"),
                        help="overlays to write (default none: the random network would flag every image)")
    parser.add_argument("--skip-local", action="store_true", help="time the Ray path only (tuning runs)")
    parser.add_argument("--staged", action="store_true",
                        help="Ray: separate read / network / encode stages, as with GPUs (default on CPUs: one "
                             "worker does all three)")
    parser.add_argument("--data", type=Path, help="keep the phantoms here between runs (default: a temp folder)")
    args = parser.parse_args()

    import torch

    from inference.inputs import list_inputs
    from inference.stages import checkpoint_info
    from sweep.segment_ray import RayOptions

    scratch = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    try:
        data = phantom_folder(args.data or scratch / "data", args.n, args.size)
        checkpoint = args.checkpoint or make_checkpoint(scratch / "unet.pt", args.profile)
        info = checkpoint_info(checkpoint)
        items = list_inputs([data])
        print(f"{len(items)} images, network {info.arch} at {info.image_size} px "
              f"(content crop {'on' if info.crop_borders else 'off'}), batch {args.batch_size}, "
              f"overlays {args.overlays}, Ray workers {args.workers or 'auto'}{', staged' if args.staged else ''}, "
              f"{os.cpu_count()} CPU(s) visible")
        options = RayOptions(batch_size=args.batch_size, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                             staged=args.staged or None)
        up_s, ray_s, ray_stages, ray_first = run_ray(items, scratch / "ray", checkpoint, info, options, args.overlays)
        n = len(items)
        workers, threads = ray_shape(options)
        print(f"Ray        : {n / ray_s:7.1f} images/s  ({ray_s:.1f} s, {1000 * ray_s / n:.1f} ms/image) "
              f"once the runtime is up; {n / (up_s + ray_s):.1f} images/s counting its {up_s:.1f} s start")
        print(breakdown(f"  Ray  ({workers} worker(s), {threads} torch thread(s) each)", ray_stages, ray_s, n, workers,
                        ray_first))
        if args.skip_local:
            return
        local_s, local_stages, local_first = run_local(
            items, scratch / "local", checkpoint, info, args.batch_size, args.overlays)
        print(f"plain loop : {n / local_s:7.1f} images/s  ({local_s:.1f} s, {1000 * local_s / n:.1f} ms/image)")
        print(breakdown(f"  loop (1 process, {torch.get_num_threads()} torch thread(s))", local_stages, local_s, n, 1,
                        local_first))
        print(f"ratio Ray / loop: {local_s / ray_s:.2f}x (with the start: {local_s / (up_s + ray_s):.2f}x); "
              f"Ray's overhead per image: {1000 * (ray_s - local_s) / n:+.1f} ms (negative: faster)")
        # Ray's workers run torch on their share of the cores, the loop on all: float sums in another
        # order can move a probability across 0.5 at a boundary pixel.
        compared, differing, pixels = mask_differences(scratch / "local", scratch / "ray")
        print(f"masks: {compared} compared, {differing} differ from the loop's, in {pixels} pixel(s) in all")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
