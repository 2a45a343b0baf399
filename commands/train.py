"""`cxrsweep train` (one supervised run, no Ray) and `cxrsweep segment` (apply a checkpoint to new images)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from commands.common import add_address_flag, add_config_flags, add_data_flags, add_progress_flag, config_from_args
from errors import UserError
from protocol.config import SEGMENTATION_MODELS, TASKS

log = logging.getLogger(__name__)

# `cxrsweep segment` without --ray / --local / --address: fewer images than this run the plain loop
# in this process, since starting a local Ray runtime costs more than it saves on them: the count
# where Ray's faster pace has paid for its start (benchmarks/bench_segment.py; docs/performance.md).
RAY_MIN_IMAGES = 1000


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train one segmentation network on JSRT (one cross-validation fold, no Ray)",
        description="Trains at the chosen profile (scale) and preset (protocol) and writes best.pt, "
                    "images.parquet (per test image), result.json, history.csv (one row per epoch) and overlays/ "
                    "to --out. "
                    "Networks start from random initialisation unless --init-weights names local weights. "
                    "An --out directory that holds checkpoints/last.pt is resumed.")
    train.add_argument("--model", choices=SEGMENTATION_MODELS, default="unet")
    train.add_argument("--task", choices=TASKS, default="lungs")
    train.add_argument("--fold", type=int, default=0, help="test fold of the 5-fold cross-validation (default 0)")
    add_config_flags(train, "train")
    train.add_argument("--seed", type=int, default=0)
    add_data_flags(train, required=True, targets=False)
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--init-weights", type=Path,
                       help="local weights (a cxrsweep checkpoint or a state_dict) to start from")
    train.set_defaults(func=run_train)

    segment = subparsers.add_parser(
        "segment", help="apply a trained checkpoint to radiographs (files or folders), on Ray or a plain loop; "
                        "resumable",
        description="Reads DICOM, JSRT .IMG, PNG/GIF/JPEG/TIFF/BMP radiographs (folders searched recursively), "
                    "prepares each exactly as the checkpoint's training data (orientation, the content crop if it "
                    "was trained with it, size, standardisation), applies the network (M_A, or M_A(G_BA(.)) for a "
                    "transfer run) and writes OUT/masks/<name>.png (0/255, in the input's full frame at its size), "
                    "OUT/segmentations.parquet (one row per image: size, content box, area fractions, components, "
                    "confidence, QC flag and reason; unreadable files with the reason) and overlays. A job of "
                    f"{RAY_MIN_IMAGES} images or more, --address or --ray runs on Ray (a local runtime, or the "
                    "cluster at --address) on restartable model workers; a smaller one, or --local, a plain loop "
                    "in this process. Ray's own messages go to OUT/logs/ray.log. Re-running skips images already "
                    "done.")
    segment.add_argument("checkpoint", type=Path, help="best.pt (or last.pt) of a cxrsweep run")
    segment.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    segment.add_argument("--out", type=Path, required=True)
    segment.add_argument("--batch-size", type=int, default=16, help="images per batch at every stage (default 16)")
    segment.add_argument("--overlays", choices=("flagged", "all", "none"), default="flagged",
                         help="write OUT/overlays/<name>.png for QC-flagged images (default), all or none")
    segment.add_argument("--retry-unreadable", action="store_true",
                         help="try again the files an earlier run listed as unreadable "
                              "(e.g. after installing a decoder)")
    add_progress_flag(segment, "redraws of the progress bar; 0: no bar")
    ray_group = segment.add_argument_group("Ray")
    add_address_flag(ray_group)
    ray_group.add_argument("--workers", type=int, default=0,
                           help="model workers (default: one per GPU share; "
                                "without GPUs one per --cpus-per-worker CPUs, "
                                "each reading, segmenting and encoding)")
    ray_group.add_argument("--gpus-per-worker", type=float, default=0.0,
                           help="GPU share of each model worker (default 0: on the CPU)")
    ray_group.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs of each model worker (default 1)")
    where = ray_group.add_mutually_exclusive_group()
    where.add_argument("--ray", action="store_true",
                       help=f"run on Ray whatever the job's size (default: from {RAY_MIN_IMAGES} images on, or with "
                            "--address / --gpus-per-worker)")
    where.add_argument("--local", action="store_true", help="a plain loop in this process, whatever the job's size")
    local = segment.add_argument_group("without Ray")
    local.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device of --local")
    segment.set_defaults(func=run_segment)


def run_train(args: argparse.Namespace) -> int:
    from data_io.cache import load_jsrt
    from engine.data.segmentation import segmentation_data
    from engine.supervised import train_supervised
    from protocol.run_dir import BEST_CHECKPOINT, HISTORY_CSV, IMAGES_PARQUET, OVERLAYS_DIR, RESULT_JSON, write_history

    flags = {"init_weights": str(args.init_weights)} if args.init_weights is not None else {}
    cfg = config_from_args(args, flags=flags, model=args.model, task=args.task, fold=args.fold, seed=args.seed)
    dataset = load_jsrt(args.jsrt, args.scr, cfg.image_size, cache_dir=args.cache_dir, crop_borders=cfg.crop_borders)
    data = segmentation_data(cfg, dataset)
    result = train_supervised(cfg, data, args.out)
    write_history(args.out, result.history)
    print(f"{cfg.model} {cfg.task} fold {cfg.fold} ({cfg.profile}): best epoch {result.best_epoch}, "
          f"val Jaccard {result.val_jaccard:.4f}; test Jaccard {result.test_jaccard_mean:.4f} ± "
          f"{result.test_jaccard_std:.4f}, Dice {result.test_dice_mean:.4f} ± {result.test_dice_std:.4f} "
          f"on {result.n_test_images} images; {result.duration_s:.1f}s on {result.device}")
    print(f"wrote {args.out}/{BEST_CHECKPOINT}, {IMAGES_PARQUET}, {RESULT_JSON}, {HISTORY_CSV}, {OVERLAYS_DIR}/")
    return 0


def use_ray(args: argparse.Namespace, count: int) -> bool:
    """Whether `cxrsweep segment` runs on Ray: asked for (--ray, --address, --gpus-per-worker), or a job
    of RAY_MIN_IMAGES images or more; not with --local. A smaller job says that it runs the loop."""
    if args.local:
        return False
    if args.ray or args.address or args.gpus_per_worker > 0:
        return True
    if count >= RAY_MIN_IMAGES:
        return True
    print(f"segment: {count} image(s), fewer than {RAY_MIN_IMAGES}: the plain loop in this process "
          "(starting Ray would cost more than it saves; --ray to use it)", flush=True)
    return False


def run_segment(args: argparse.Namespace) -> int:
    from inference.inputs import list_inputs
    from inference.local import Progress, segment_local
    from inference.output import SegmentOutput
    from inference.stages import checkpoint_info

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    info = checkpoint_info(args.checkpoint)
    items = list_inputs(args.inputs)
    output = SegmentOutput(args.out, info, args.checkpoint)
    todo = output.pending(items, retry_unreadable=args.retry_unreadable)
    print(f"segment: {len(items)} image(s), {len(items) - len(todo)} already done, {len(todo)} to do; "
          f"{info.arch} ({info.task}, {info.image_size} px, content crop {'on' if info.crop_borders else 'off'}) "
          f"-> {args.out}", flush=True)
    if info.foreground_range is None:
        log.warning("%s records no training area range (an older checkpoint): QC checks empty masks and "
                    "components only", args.checkpoint)
    if todo:
        on_ray = use_ray(args, len(todo))
        progress = Progress(len(todo), args.progress_every)
        if not on_ray:
            segment_local(todo, output, args.checkpoint, device=args.device, batch_size=args.batch_size,
                          overlays=args.overlays, progress=progress)
        else:
            from sweep.segment_ray import RayOptions, segment_with_ray

            options = RayOptions(address=args.address, batch_size=args.batch_size, workers=args.workers,
                                 gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker)
            segment_with_ray(todo, output, args.checkpoint, options, overlays=args.overlays, progress=progress)
        progress.close()
    rows = output.gather()
    ok = rows[rows.status == "ok"]
    unreadable = rows[rows.status == "unreadable"]
    print(f"segment: {len(ok)} mask(s) in {args.out / 'masks'}, {int(ok.qc_flag.sum())} flagged for review, "
          f"{len(unreadable)} unreadable; table {output.parquet}")
    for path, error in zip(unreadable.path, unreadable.error):
        print(f"  unreadable: {path}: {error}")
    return 0
