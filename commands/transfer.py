"""`cxrsweep train-transfer`: one cross-dataset transfer run (JSRT -> Montgomery or Shenzhen), no Ray."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from commands.common import add_config_flags, add_data_flags, config_from_args
from data_io.datasets import TARGET_DATASETS
from errors import UserError
from models.translator_defaults import DEFAULT_TRANSLATOR, TRANSLATOR_DEFAULTS
from protocol.config import TASKS, TRANSFER_METHODS

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-transfer", help="one transfer run from JSRT to a target dataset (proposed method or a baseline, no Ray)",
        description="Writes to --out what `cxrsweep train` writes (best.pt, images.parquet for the target test "
                    "images, result.json, history.csv, overlays/) plus translations/ (A->B->A and B->A->B samples) "
                    "for the proposed method. M_A, the U-Net pre-trained on JSRT, comes from --segmenter or is trained "
                    "into OUT/m_a on the matching fold. The translator warm-up is cached under --translator-cache "
                    "and reused by every task and label fraction. Heart and clavicle runs on a target without "
                    "those labels give overlays only.")
    parser.add_argument("--method", choices=TRANSFER_METHODS, default="proposed")
    parser.add_argument("--task", choices=TASKS, default="lungs")
    parser.add_argument("--label-fraction", type=float, default=0.0, metavar="PERCENT",
                        help="percent of the target training split that keeps its labels (default 0)")
    parser.add_argument("--target", default="montgomery",
                        help=f"{', '.join(TARGET_DATASETS)} (their folders by --montgomery / --shenzhen) "
                             "or the name of a --target-dir folder of your own (default montgomery)")
    parser.add_argument("--repetition", type=int, default=0, help="which seeded 60/20/20 split (default 0)")
    parser.add_argument("--translator", choices=sorted(TRANSLATOR_DEFAULTS),
                        help=f"default: the config's ({DEFAULT_TRANSLATOR})")
    add_config_flags(parser, "train-transfer")
    parser.add_argument("--seed", type=int, default=0)
    add_data_flags(parser, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--segmenter", type=Path, help="M_A checkpoint (best.pt of a `cxrsweep train` run on JSRT)")
    parser.add_argument("--translator-cache", type=Path,
                        help="where warmed translators are kept (default: CACHE_DIR/translators)")
    parser.set_defaults(func=run_train_transfer)


def run_train_transfer(args: argparse.Namespace) -> int:
    from data_io.cache import default_cache_dir, load_jsrt, load_target
    from engine.data.transfer import transfer_data
    from engine.transfer.dispatch import NotApplicable, check_applicable, train_transfer
    from engine.transfer.proposed.warmup import warmup_translator
    from protocol.run_dir import (
        BEST_CHECKPOINT,
        HISTORY_CSV,
        IMAGES_PARQUET,
        OVERLAYS_DIR,
        RESULT_JSON,
        TRANSLATIONS_DIR,
        write_history,
    )

    target_dir = target_folder(args)
    flags = {"translator": args.translator} if args.translator else {}
    cfg = config_from_args(args, flags=flags, experiment="transfer", method=args.method, task=args.task,
                           label_fraction=args.label_fraction, target=args.target, repetition=args.repetition,
                           seed=args.seed)
    source = load_jsrt(args.jsrt, args.scr, cfg.image_size, cache_dir=args.cache_dir, crop_borders=cfg.crop_borders)
    target = load_target(args.target, target_dir, cfg.image_size, cache_dir=args.cache_dir,
                         crop_borders=cfg.crop_borders)
    data = transfer_data(cfg, source, target)
    try:
        check_applicable(cfg, data)  # before spending minutes on M_A or the warm-up
    except NotApplicable as reason:
        print(f"{cfg.method} {cfg.task} at {cfg.label_fraction:g} % labels: not applicable ({reason})")
        return 0
    segmenter = args.segmenter or train_source_model(cfg, source, args.out / "m_a")
    translator = None
    if cfg.method == "proposed":
        cache = args.translator_cache or Path(args.cache_dir or default_cache_dir()) / "translators"
        translator = warmup_translator(cfg, source, target, cache)
    result = train_transfer(cfg, data, args.out, segmenter, translator)
    write_history(args.out, result.history)
    if result.n_test_images:
        outcome = (f"test Jaccard {result.test_jaccard_mean:.4f} ± {result.test_jaccard_std:.4f}, Dice "
                   f"{result.test_dice_mean:.4f} ± {result.test_dice_std:.4f} on {result.n_test_images} "
                   f"{cfg.target} images")
    else:
        outcome = f"{cfg.target} has no {cfg.task} labels: overlays only"
    print(f"{cfg.method} {cfg.task} jsrt -> {cfg.target} at {cfg.label_fraction:g} % labels ({cfg.profile}): "
          f"best epoch {result.best_epoch}, val Jaccard {result.val_jaccard:.4f}; {outcome}; "
          f"{result.duration_s:.1f}s on {result.device}")
    extra = f", {TRANSLATIONS_DIR}/" if cfg.method == "proposed" else ""
    summary = json.loads((Path(args.out) / RESULT_JSON).read_text())
    if "selected_model" in summary:
        print(proposed_outcome(summary))
    print(f"wrote {args.out}/{BEST_CHECKPOINT}, {IMAGES_PARQUET}, {RESULT_JSON}, {HISTORY_CSV}, {OVERLAYS_DIR}/{extra}")
    return 0


def proposed_outcome(summary: dict) -> str:
    """One line on what a transfer run kept, the target labels it read and, for the proposed
    method, whether its discriminators saturated."""
    from protocol.run_dir import NO_ADAPTATION

    criterion = summary["selection_criterion"]
    rule = summary.get("selection_rule")
    if summary["selected_model"] == NO_ADAPTATION:
        if rule:
            kept = f"kept no adaptation (M_A as it is, epoch 0): {rule}"
        else:
            kept = (f"kept no adaptation (M_A as it is, epoch 0): "
                    f"its best trained epoch {summary['adapted_epoch']} was not "
                    f"{'clearly ' if criterion == 'target_plausibility' else ''}better by {criterion} "
                    f"({summary['selection_score']:.4f} without adaptation)")
    else:
        kept = f"kept the adapted epoch {summary['best_epoch']} ({rule or 'chosen by ' + criterion})"
    labels = f"; {summary['target_labels_used']} target labels read ({summary['label_budget']} budget)" \
        if "target_labels_used" in summary else ""
    saturated = "; the discriminators saturated (see the log and result.json)" \
        if summary.get("discriminators_saturated") else ""
    return kept + labels + saturated


def target_folder(args: argparse.Namespace) -> Path:
    """The --target set's folder: --target-dir, or --montgomery / --shenzhen for the known sets."""
    from data_io.datasets import check_target_name, target_dirs

    check_target_name(args.target)
    folders = target_dirs(args.target_dir, args.target)
    other = sorted(set(folders) - {args.target})
    if other:
        raise UserError(f"--target-dir {other[0]}=...: this run transfers to --target {args.target}")
    folder = folders.get(args.target) or (getattr(args, args.target) if args.target in TARGET_DATASETS else None)
    if folder is None:
        known = f"--{args.target} DIR or " if args.target in TARGET_DATASETS else ""
        raise UserError(f"--target {args.target} needs {known}--target-dir DIR (the target set's folder)")
    return Path(folder)


def train_source_model(cfg, source, run_dir: Path) -> Path:
    """M_A: the paper's U-Net on the JSRT fold that matches the repetition (resumed if already there)."""
    from engine.data.segmentation import segmentation_data
    from engine.supervised import train_supervised
    from protocol.grid import source_model_config
    from protocol.run_dir import best_checkpoint_path

    seg_cfg = source_model_config(cfg)
    log.info("no --segmenter given: training M_A (unet, %s, fold %d) into %s", cfg.task, seg_cfg.fold, run_dir)
    train_supervised(seg_cfg, segmentation_data(seg_cfg, source), run_dir)
    return best_checkpoint_path(run_dir)
