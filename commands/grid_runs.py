"""`cxrsweep run`, `cxrsweep tune` and `cxrsweep demo`: the sweep's command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from commands.common import (
    add_address_flag,
    add_cache_dir_flag,
    add_config_flags,
    add_data_flags,
    add_preset_flag,
    add_profile_flag,
    add_progress_flag,
    config_from_args,
)
from data_io.datasets import TARGET_DATASETS
from errors import UserError
from protocol.config import (
    AUGMENTATIONS,
    FUSE_DEFAULTS_NOTE,
    FUSED_TRIALS,
    GPUS_PER_TRIAL,
    LABEL_FRACTIONS,
    PRESETS,
    SEGMENTATION_MODELS,
    TASKS,
    TRANSFER_METHODS,
    RunConfig,
)
from sweep.options import LOST_WORKER_RETRIES

EXIT_TRIALS_FAILED = 1


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")

    return parse


def _number(kind, *, at_least: float | None = None, above: float | None = None):
    """An argparse type: a number of `kind` within its bound, refused with argparse's one line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if at_least is not None and value < at_least or above is not None and value <= above:
            bound = f">= {at_least:g}" if at_least is not None else f"> {above:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _gpu_share(text: str) -> float:
    """--gpus-per-trial: 0 (no GPU), a fraction in (0, 1] (trials share a GPU) or whole GPUs."""
    value = _number(float, at_least=0)(text)
    if value > 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(f"use a fraction in (0, 1] or a whole number of GPUs, got {text}")
    return value


def add_dry_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials by kind and profile, what each asks of the cluster, the projected "
                             "GPU-hours and the effective config, then exit: no data read, no Ray started, nothing "
                             "written (--out and the data flags may be left out)")


def required_out(args) -> str:
    """--out, which every command but a dry run needs (argparse cannot say "unless --dry-run")."""
    if not args.out:
        raise UserError(f"the following argument is required: --out (cxrsweep {args.command} --help)")
    return args.out


# The demo's slice of the grid: every model, task and method, the paper's protocol and ours, on
# two folds, one repetition and four label fractions, so it finishes in minutes on 2 CPU cores.
DEMO_SLICE = {"folds": (0, 1), "repetitions": (0,), "fractions": (0.0, 10.0, 50.0, 100.0),
              "augmentations": ("none", "robust")}


def _text(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_augmentations_flag(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--augmentations", type=_csv(str), default=_csv(str)(default) if default else None,
                        help="run the grid once per training recipe, e.g. none,robust: the paper's protocol "
                             f"(none) and ours side by side ({', '.join(AUGMENTATIONS)}; default "
                             f"{default or 'the config field augmentation, ' + RunConfig.augmentation})")


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    ray_group = parser.add_argument_group("Ray")
    add_address_flag(ray_group)
    ray_group.add_argument("--gpus-per-trial", type=_gpu_share, default=None,
                           help="GPU share per trial; fractions pack several trials on one GPU (default per profile: "
                                + ", ".join(f"{p} {g:g}" for p, g in GPUS_PER_TRIAL.items())
                                + "); ignored with a message when the cluster has no GPUs")
    ray_group.add_argument("--cpus-per-trial", type=_number(float, above=0), default=1.0,
                           help="CPUs per trial (default 1)")
    ray_group.add_argument("--max-concurrent", type=_number(int, at_least=0), default=0,
                           help="at most this many trials at once (0: no limit)")
    ray_group.add_argument("--retries", type=_number(int, at_least=0), default=1,
                           help="retries of a trial that raised an error, each from its last checkpoint (default 1); "
                                "a trial whose worker process or node was lost (a reclaimed spot instance) is "
                                f"retried besides, up to {LOST_WORKER_RETRIES} times; 0: no retries at all")
    ray_group.add_argument("--checkpoint-every-s", type=float, default=None, metavar="SECONDS",
                           help="a trial checkpoints (last.pt only) at most this often, and after its last epoch; "
                                f"0: every epoch (default {RunConfig.checkpoint_every_s:g}, the config field "
                                "checkpoint_every_s); a resumed trial repeats at most that much training")
    add_progress_flag(ray_group)


# `cxrsweep run --config` also takes the record `cxrsweep tune` writes (tune's --config does not).
RUN_CONFIG_HELP = ("JSON of config fields for every trial, or the record `cxrsweep tune` writes: each fold / "
                   "repetition of the tuned cell takes its own entry, and a trial whose test images the tuning "
                   "used is refused (--config-from: its former name)")


def tuning_record(args):
    """The `cxrsweep tune` record given to --config, or None for a plain file of fields."""
    from protocol.config import read_json_file
    from protocol.tuned import is_tuning_record, record_from

    path = getattr(args, "config", None)
    if not path:
        return None
    values = read_json_file(path)
    return record_from(path, values) if is_tuning_record(values) else None


def run_config(args):
    """`cxrsweep run`'s base config and the tuning record given to --config (None for a plain file
    of fields, which becomes part of the config); a record is read once and applied per trial."""
    record = tuning_record(args)
    return config_from_args(args, record_applied=record is not None), record


def data_paths(args):
    from data_io.datasets import is_folder_target, target_dirs
    from sweep.inputs import DataPaths

    selected = getattr(args, "targets", None) or [getattr(args, "target", None)]
    folder_targets = [t for t in selected if t and is_folder_target(t)]
    default = folder_targets[0] if len(folder_targets) == 1 else None
    return DataPaths(jsrt=args.jsrt, scr=args.scr, montgomery=args.montgomery, shenzhen=args.shenzhen,
                     cache_dir=args.cache_dir, target_dirs=target_dirs(args.target_dir, default))


def sweep_options(args, **extra):
    from sweep.options import SweepOptions

    return SweepOptions(out=args.out, address=args.address, gpus_per_trial=args.gpus_per_trial,
                        fuse=getattr(args, "fuse", None),
                        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent,
                        retries=args.retries, progress_every_s=args.progress_every, **extra)


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run", help="run Table I / Table II (or both) on Ray Tune and gather the results in Parquet",
        description="Schedules every trial of the grid on a Ray cluster (or locally), dependencies first, "
                    "and writes OUT/results/trials.parquet and images.parquet. Exits 1 if a trial failed.")
    run.add_argument("experiment", choices=("segmentation", "transfer", "all"))
    add_config_flags(run, "run", RUN_CONFIG_HELP)
    run.add_argument("--models", type=_csv(str), help=f"segmentation models (default {','.join(SEGMENTATION_MODELS)})")
    run.add_argument("--tasks", type=_csv(str),
                     help=f"tasks (default {','.join(TASKS)}; transfer: lungs in Table II, heart and clavicles "
                          "as Fig. 9 overlays only)")
    run.add_argument("--folds", type=_csv(int), help="JSRT test folds (default all)")
    run.add_argument("--methods", type=_csv(str), help=f"transfer methods (default {','.join(TRANSFER_METHODS)})")
    run.add_argument("--fractions", type=_csv(float),
                     help=f"target label fractions in percent (default {','.join(f'{f:g}' for f in LABEL_FRACTIONS)})")
    run.add_argument("--repetitions", type=_csv(int), help="transfer repetitions (default 0..n_folds-1)")
    add_augmentations_flag(run)
    run.add_argument("--targets", type=_csv(str),
                     help=f"target datasets (default montgomery): {','.join(TARGET_DATASETS)} or the name of a "
                          "--target-dir folder")
    add_data_flags(run)
    run.add_argument("--out", help="output folder or storage URI (s3://, gs://); required unless --dry-run")
    add_dry_run_flag(run)
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted sweep: running trials resume from their last checkpoint")
    add_cluster_flags(run)
    run.add_argument("--fuse", type=_number(int, at_least=1), default=None, metavar="K",
                     help="train up to K ready trials of one network, task, image size, batch size and epoch "
                          "count as one computation on one device: Table I / M_A trials, or the finetune and "
                          "scratch runs of one target, or its self-training runs (each keeps its own trial, images, "
                          "optimiser, selection, checkpoint and result); 1: every trial alone (default per "
                          "profile: " + ", ".join(f"{p} {k}" for p, k in FUSED_TRIALS.items())
                          + f"; {FUSE_DEFAULTS_NOTE}). Give the fused trial a whole GPU (--gpus-per-trial 1)")
    run.set_defaults(func=cmd_run)

    tune_parser = subparsers.add_parser(
        "tune", help="search lr, weight decay, batch size (and proposed's loss weights) with Optuna + ASHA",
        description="Optuna search with ASHA early stopping over one grid cell, scored on validation Jaccard only; "
                    "writes the best config as JSON for `cxrsweep run --config FILE`.")
    add_config_flags(tune_parser, "tune")
    tune_parser.add_argument("--model", default="unet", choices=SEGMENTATION_MODELS)
    tune_parser.add_argument("--task", default="lungs", choices=TASKS)
    tune_parser.add_argument("--fold", type=int, default=0,
                             help="the JSRT test fold whose runs the config is for (its second-validation fold scores)")
    tune_parser.add_argument("--folds", type=_csv(int),
                             help="one search per test fold, e.g. 0,1,2,3,4: one entry per fold in the record")
    tune_parser.add_argument("--method", default="supervised", choices=("supervised", *TRANSFER_METHODS),
                             help="supervised (Table I) or a transfer method (Table II)")
    tune_parser.add_argument("--label-fraction", type=float, default=0.0, help="transfer: percent of target labels")
    tune_parser.add_argument("--target", default="montgomery",
                             help=f"{', '.join(TARGET_DATASETS)} or a --target-dir folder's name (default montgomery)")
    tune_parser.add_argument("--repetition", type=int, default=0, help="transfer: the repetition the config is for")
    tune_parser.add_argument("--repetitions", type=_csv(int),
                             help="transfer: one search per repetition, e.g. 0,1,2,3,4")
    tune_parser.add_argument("--trials", type=_number(int, at_least=1), default=20, help="Optuna samples (default 20)")
    tune_parser.add_argument("--best-config", metavar="FILE",
                             help="where to write the best config (default OUT/best-config.json)")
    add_data_flags(tune_parser)
    tune_parser.add_argument("--out", help="output folder or storage URI; required unless --dry-run")
    add_dry_run_flag(tune_parser)
    add_cluster_flags(tune_parser)
    tune_parser.set_defaults(func=cmd_tune)

    demo = subparsers.add_parser(
        "demo", help="phantoms -> a demo-size sweep of Table I and II, both recipes, on this machine -> report",
        description="Synthesises phantom datasets once (cached), runs a slice of `all` (every model, task, method "
                    "and both training recipes; fewer folds, repetitions and label fractions) at the demo profile "
                    "on a local Ray runtime and writes the report (or prints the result tables).")
    demo.add_argument("--out", help="output folder; required unless --dry-run")
    add_dry_run_flag(demo)
    add_profile_flag(demo, "demo")
    add_preset_flag(demo)
    demo.add_argument("--folds", type=_csv(int), default=list(DEMO_SLICE["folds"]),
                      help=f"JSRT folds (default {_text(DEMO_SLICE['folds'])})")
    demo.add_argument("--repetitions", type=_csv(int), default=list(DEMO_SLICE["repetitions"]),
                      help=f"transfer repetitions (default {_text(DEMO_SLICE['repetitions'])})")
    demo.add_argument("--fractions", type=_csv(float), default=list(DEMO_SLICE["fractions"]),
                      help=f"label fractions in percent (default {_text(DEMO_SLICE['fractions'])})")
    demo.add_argument("--augmentations", type=_csv(str), default=None,
                      help=f"training recipes (default {_text(DEMO_SLICE['augmentations'])}: the paper's protocol and "
                           "ours side by side; with --preset paper, none: the paper's alone)")
    demo.add_argument("--phantoms", help="phantom folder (default: a cached one under the preprocessing cache)")
    add_cache_dir_flag(demo)
    demo.add_argument("--cpus-per-trial", type=_number(float, above=0), default=1.0, help="CPUs per trial (default 1)")
    add_progress_flag(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_run(args) -> int:
    from protocol.grid import build_grid

    base, record = run_config(args)
    grid = build_grid(args.experiment, base, models=args.models, tasks=args.tasks, folds=args.folds,
                      methods=args.methods, fractions=args.fractions, repetitions=args.repetitions,
                      targets=args.targets, tuned=record.adjust if record else None,
                      augmentations=args.augmentations)
    if args.dry_run:
        from commands.dry_run import print_grid

        notes = [f"tuning record {args.config}: its entries configure their cells above; the check that no trial is "
                 "configured with its own test images reads the data, so it runs when the sweep starts"] \
            if record else []
        return print_grid(f"run {args.experiment}", grid, base, args, notes=notes)
    required_out(args)
    datasets = None
    if record is not None and grid.runnable():
        from protocol.tuned import check_grid
        from sweep.inputs import load_trial_datasets

        # Before Ray starts or anything trains: no trial may be configured with its own test images.
        datasets = load_trial_datasets(grid.runnable(), data_paths(args))
        check_grid(record, grid, datasets)
    from sweep.runner import run_grid

    outcome = run_grid(grid, data_paths(args), sweep_options(args, resume=args.resume), datasets=datasets)
    return 0 if outcome.ok else EXIT_TRIALS_FAILED


def tune_cells(args, base: RunConfig) -> list:
    """`[cell, *dependencies]` of each search `cxrsweep tune` asks for (protocol.tuned.tuning_cell)."""
    from data_io.datasets import check_target_name
    from protocol.grid import check_folds, check_repetitions
    from protocol.tuned import tuning_cell

    method = None if args.method == "supervised" else args.method
    check_target_name(args.target)
    if method is None:
        folds = check_folds(args.folds if args.folds is not None else [args.fold], base.n_folds)
        if not folds:
            raise UserError("--folds: none given")
        return [tuning_cell(base, args.model, args.task, fold, None, 0.0, args.target, 0) for fold in folds]
    repetitions = check_repetitions(args.repetitions if args.repetitions is not None else [args.repetition])
    if not repetitions:
        raise UserError("--repetitions: none given")
    return [tuning_cell(base, args.model, args.task, 0, method, args.label_fraction, args.target, repetition)
            for repetition in repetitions]


def cmd_tune(args) -> int:
    # A tuning record given to --config is refused here, before Ray starts: its entries belong to
    # particular folds / repetitions, and only `cxrsweep run` applies and checks them.
    base = config_from_args(args)
    cells = tune_cells(args, base)
    if args.dry_run:
        from commands.dry_run import print_tuning

        return print_tuning(cells, args.trials, base, args)
    from sweep.tuning import run_tuning

    out = required_out(args)
    best_file = Path(args.best_config) if args.best_config else Path(out) / "best-config.json"
    run_tuning(cells, data_paths(args), sweep_options(args), args.trials, best_file)
    return 0


# Phantom counts and sizes of the demo: enough images for 5-fold CV and a 60/20/20 target split.
DEMO_PHANTOMS = {"n_source": 40, "n_target": 30, "source_size": 256, "target_size": 256, "seed": 0}


def demo_phantoms(folder: str | None, cache_dir: str | None) -> dict[str, str]:
    """Phantom datasets, synthesised once: a finished folder carries a marker and is reused."""
    from data_io.cache import default_cache_dir
    from data_io.phantoms import synthesize

    key = "-".join(f"{v}" for v in DEMO_PHANTOMS.values())
    root = Path(folder) if folder else Path(cache_dir or default_cache_dir()) / f"phantoms-{key}"
    marker = root / "phantoms.json"
    if marker.is_file():
        print(f"[demo] phantoms: reusing {root}")
        return json.loads(marker.read_text())
    print(f"[demo] phantoms: synthesising {DEMO_PHANTOMS} into {root}")
    written = {name: str(path) for name, path in synthesize(root, **DEMO_PHANTOMS).items()}
    marker.write_text(json.dumps(written, indent=2) + "\n")
    return written


def demo_recipes(args, base: RunConfig) -> list[str]:
    """--augmentations, else the demo's both recipes; under a preset that names one (paper: none), that one."""
    if args.augmentations:
        return args.augmentations
    return [base.augmentation] if "augmentation" in PRESETS[args.preset] else list(DEMO_SLICE["augmentations"])


def cmd_demo(args) -> int:
    import time

    from protocol.config import make_config
    from protocol.grid import build_grid

    base = make_config(args.profile, preset=args.preset)
    grid = build_grid("all", base, folds=args.folds, repetitions=args.repetitions, fractions=args.fractions,
                      augmentations=demo_recipes(args, base))
    if args.dry_run:
        from commands.dry_run import print_grid

        return print_grid("demo", grid, base, args, notes=[
            f"the demo synthesises phantoms once ({', '.join(f'{k} {v}' for k, v in DEMO_PHANTOMS.items())}) and runs "
            "on a local Ray runtime of this machine"])
    from sweep.inputs import DataPaths
    from sweep.options import SweepOptions
    from sweep.runner import run_grid

    required_out(args)
    started = time.time()
    phantoms = demo_phantoms(args.phantoms, args.cache_dir)
    paths = DataPaths(jsrt=phantoms["jsrt"], scr=phantoms["scr"], montgomery=phantoms["montgomery"],
                      cache_dir=args.cache_dir)
    options = SweepOptions(out=args.out, cpus_per_trial=args.cpus_per_trial,
                           progress_every_s=args.progress_every, object_store_memory=512 * 1024 * 1024)
    outcome = run_grid(grid, paths, options)
    report = _report(args.out, args.profile)
    print(f"[demo] finished in {time.time() - started:.0f} s; results in {Path(args.out) / 'results'}; report {report}")
    return 0 if outcome.ok else EXIT_TRIALS_FAILED


def _report(out: str, profile: str) -> Path:
    from analysis.report import build_report

    return build_report(out, profile=profile)


if __name__ == "__main__":  # pragma: no cover
    from commands.main import main

    sys.exit(main(["run", *sys.argv[1:]]))
