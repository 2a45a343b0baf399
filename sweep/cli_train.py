"""`cxrsweep train` (one supervised run, no Ray) and `cxrsweep segment` (apply a checkpoint to new images)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sweep.config import PROFILES, SEGMENTATION_MODELS, TASKS

log = logging.getLogger(__name__)

# File types `cxrsweep segment` reads; .IMG is JSRT's raw 12-bit format.
IMAGE_SUFFIXES = (".img", ".png", ".gif", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train one segmentation network on JSRT (one cross-validation fold, no Ray)",
        description="Trains with the paper's protocol at the chosen profile and writes best.pt, "
                    "images.parquet (per test image), result.json and overlays/ to --out. "
                    "Networks start from random initialisation unless --init-weights names local weights. "
                    "An --out directory that holds checkpoints/last.pt is resumed.")
    train.add_argument("--model", choices=SEGMENTATION_MODELS, default="unet")
    train.add_argument("--task", choices=TASKS, default="lungs")
    train.add_argument("--fold", type=int, default=0, help="test fold of the 5-fold cross-validation (default 0)")
    train.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="scale of the run (default cpu)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--jsrt", type=Path, required=True, help="JSRT images (.IMG files or re-packaged PNGs)")
    train.add_argument("--scr", type=Path, required=True, help="SCR masks for JSRT")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--init-weights", type=Path, help="local weights (a cxrsweep checkpoint or a state_dict) to start from")
    train.add_argument("--config", type=Path, help="JSON file of config fields (e.g. written by `cxrsweep tune`)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config field, e.g. --set epochs=5 --set augment=true (repeatable)")
    train.add_argument("--cache-dir", type=Path, help="preprocessing cache (default $CXRSWEEP_CACHE or ~/.cache/cxrsweep)")
    train.set_defaults(func=run_train)

    segment = subparsers.add_parser(
        "segment", help="apply a trained checkpoint to radiographs; write masks and overlays",
        description="Reads JSRT .IMG or PNG/GIF/JPEG/TIFF/BMP radiographs (files or folders), prepares them as the "
                    "checkpoint's training data was (size, normalisation), and writes OUT/masks/<name>.png "
                    "(0/255, at the input's size) and OUT/overlays/<name>.png.")
    segment.add_argument("checkpoint", type=Path, help="best.pt (or last.pt) of a cxrsweep run")
    segment.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    segment.add_argument("--out", type=Path, required=True)
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    segment.set_defaults(func=run_segment)


def run_train(args: argparse.Namespace) -> int:
    from data_io.cache import load_jsrt
    from sweep.config import load_config_file, make_config, parse_overrides
    from sweep.engine.data import segmentation_data
    from sweep.engine.supervised import train_supervised

    overrides: dict = dict(load_config_file(args.config)) if args.config else {}
    overrides.update(parse_overrides(args.overrides))
    if args.init_weights is not None:
        overrides["init_weights"] = str(args.init_weights)
    cfg = make_config(args.profile, overrides, model=args.model, task=args.task, fold=args.fold, seed=args.seed)
    dataset = load_jsrt(args.jsrt, args.scr, cfg.image_size, cache_dir=args.cache_dir, crop_borders=cfg.crop_borders)
    data = segmentation_data(cfg, dataset)
    result = train_supervised(cfg, data, args.out)
    print(f"{cfg.model} {cfg.task} fold {cfg.fold} ({cfg.profile}): best epoch {result.best_epoch}, "
          f"val Jaccard {result.val_jaccard:.4f}; test Jaccard {result.test_jaccard_mean:.4f} ± "
          f"{result.test_jaccard_std:.4f}, Dice {result.test_dice_mean:.4f} ± {result.test_dice_std:.4f} "
          f"on {result.n_test_images} images; {result.duration_s:.1f}s on {result.device}")
    print(f"wrote {args.out}/best.pt, images.parquet, result.json, overlays/")
    return 0


def image_files(inputs: list[Path]) -> list[Path]:
    """The radiographs named by files and folders (a folder's own files, sorted)."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: no radiographs ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def run_segment(args: argparse.Namespace) -> int:
    from sweep.engine.inference import Segmenter

    files = image_files(args.inputs)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, device=args.device)
    log.info("segmenting %d image(s) with %s (%s, %s at %d px) on %s", len(files), args.checkpoint,
             segmenter.arch, segmenter.task, segmenter.image_size, segmenter.device)
    for path in files:
        mask_path, overlay_path, fraction = segmenter.segment_file(path, args.out)
        print(f"{path}: {segmenter.task} covers {100 * fraction:.1f}% -> {mask_path}, {overlay_path}")
    return 0
