"""`cxrsweep run`, `cxrsweep tune` and `cxrsweep demo`: the sweep's command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sweep.config import LABEL_FRACTIONS, PROFILES, SEGMENTATION_MODELS, TARGETS, TASKS, TRANSFER_METHODS

EXIT_TRIALS_FAILED = 1


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}")

    return parse


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (read on the driver only; workers get arrays through Ray)")
    data.add_argument("--jsrt", help="JSRT images folder (All247images or its parent)")
    data.add_argument("--scr", help="SCR masks folder")
    data.add_argument("--montgomery", help="Montgomery set folder")
    data.add_argument("--shenzhen", help="Shenzhen set folder")
    data.add_argument("--cache-dir", help="preprocessing cache (default $CXRSWEEP_CACHE or ~/.cache/cxrsweep)")


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start one here)")
    ray_group.add_argument("--gpus-per-trial", type=float, default=0.25,
                           help="GPU share per trial; fractions pack several trials on one GPU (default 0.25); "
                                "ignored with a message when the cluster has no GPUs")
    ray_group.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    ray_group.add_argument("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: no limit)")
    ray_group.add_argument("--retries", type=int, default=1, help="retries of a failed trial, from its last checkpoint (default 1)")
    ray_group.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                           help="seconds between progress lines (default 10)")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES), help="config profile (default paper)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any run-config field (repeatable)")
    parser.add_argument("--config-from", metavar="FILE", help="JSON of config fields, e.g. written by `cxrsweep tune`")


def base_config(args):
    from sweep.config import load_config_file, make_config, parse_overrides

    values: dict = {}
    if args.config_from:
        values.update(load_config_file(args.config_from))
    values.update(parse_overrides(args.overrides))
    return make_config(args.profile, values)


def data_paths(args):
    from sweep.runner import DataPaths

    return DataPaths(jsrt=args.jsrt, scr=args.scr, montgomery=args.montgomery, shenzhen=args.shenzhen,
                     cache_dir=args.cache_dir)


def sweep_options(args, **extra):
    from sweep.runner import SweepOptions

    return SweepOptions(out=args.out, address=args.address, gpus_per_trial=args.gpus_per_trial,
                        cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent,
                        retries=args.retries, progress_every_s=args.progress_every, **extra)


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run", help="run Table I / Table II (or both) on Ray Tune and gather the results in Parquet",
        description="Schedules every trial of the grid on a Ray cluster (or locally), dependencies first, "
                    "and writes OUT/results/trials.parquet and images.parquet. Exits 1 if a trial failed.")
    run.add_argument("experiment", choices=("segmentation", "transfer", "all"))
    add_config_flags(run)
    run.add_argument("--models", type=_csv(str), help=f"segmentation models (default {','.join(SEGMENTATION_MODELS)})")
    run.add_argument("--tasks", type=_csv(str), help=f"tasks (default {','.join(TASKS)}; transfer: lungs)")
    run.add_argument("--folds", type=_csv(int), help="JSRT test folds (default all)")
    run.add_argument("--methods", type=_csv(str), help=f"transfer methods (default {','.join(TRANSFER_METHODS)})")
    run.add_argument("--fractions", type=_csv(float),
                     help=f"target label fractions in percent (default {','.join(f'{f:g}' for f in LABEL_FRACTIONS)})")
    run.add_argument("--repetitions", type=_csv(int), help="transfer repetitions (default 0..n_folds-1)")
    run.add_argument("--targets", type=_csv(str), help=f"target datasets (default montgomery; choices {','.join(TARGETS)})")
    add_data_flags(run)
    run.add_argument("--out", required=True, help="output folder or storage URI (s3://, gs://)")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted sweep: running trials resume from their last checkpoint")
    add_cluster_flags(run)
    run.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from sweep.grid import build_grid
    from sweep.runner import run_grid

    grid = build_grid(args.experiment, base_config(args), models=args.models, tasks=args.tasks, folds=args.folds,
                      methods=args.methods, fractions=args.fractions, repetitions=args.repetitions,
                      targets=args.targets)
    outcome = run_grid(grid, data_paths(args), sweep_options(args, resume=args.resume))
    return 0 if outcome.ok else EXIT_TRIALS_FAILED


if __name__ == "__main__":  # pragma: no cover
    from sweep.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
