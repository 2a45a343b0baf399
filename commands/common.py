"""Flags every training command shares: the config flags (`--profile`, `--preset`, `--config`,
`--set`), the data flags, and how they become a RunConfig. Nothing heavy at import."""
from __future__ import annotations

import argparse
from typing import Any

from data_io.datasets import TARGET_DATASETS
from protocol.config import DEFAULT_PRESET, PRESETS, PROFILES, RunConfig

# The default-profile rule: a single run on this machine defaults to the CPU-sized profile,
# a sweep (which may use a GPU cluster) to the paper's, the demo to its own (protocol.config.PROFILES).
DEFAULT_PROFILE = {"train": "cpu", "train-transfer": "cpu", "run": "paper", "tune": "paper", "demo": "demo"}
PROFILE_RULE = "default: cpu for one run on this machine (train, train-transfer), paper for a sweep (run, tune), " \
               "demo for the demo"


def add_profile_flag(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE[command],
                        help=f"scale of the runs ({PROFILE_RULE}; here {DEFAULT_PROFILE[command]})")


def add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
        help=f"the protocol, apart from the scale (--profile): {DEFAULT_PRESET} (default: robust augmentation, the "
             "honest label budget, the balanced GAN, each method's fixed schedule under the harm guard, fine-tuning "
             "with source replay) or paper (the paper's in full: "
             + ", ".join(f"{k}={v}" for k, v in PRESETS["paper"].items()) + "); --set overrides it")


def add_config_flags(parser: argparse.ArgumentParser, command: str, config_help: str | None = None) -> None:
    add_profile_flag(parser, command)
    add_preset_flag(parser)
    parser.add_argument("--config", "--config-from", dest="config", metavar="FILE",
                        help=config_help or "JSON object of config fields (--config-from: its former name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any run-config field, e.g. --set epochs=5 --set augmentation=none (repeatable); "
                             "each value is checked against its field's type and range before anything starts")


def add_data_flags(parser: argparse.ArgumentParser, *, required: bool = False, targets: bool = True) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--jsrt", required=required, help="JSRT images (.IMG files or re-packaged PNGs; All247images "
                                                        "or its parent)")
    data.add_argument("--scr", required=required, help="SCR masks for JSRT")
    if targets:
        for name in TARGET_DATASETS:
            data.add_argument(f"--{name}", help=f"{name.capitalize()} set folder (for the target {name})")
        data.add_argument("--target-dir", action="append", metavar="[NAME=]DIR",
                          help="a target set as a folder of radiographs (DICOM, PNG, ...; or DIR/images/) with "
                               "optional lung masks in DIR/masks/ matched by name (repeatable); a bare DIR belongs "
                               "to the one folder target selected; without masks only 0 %% labels apply and runs "
                               "write overlays, no scores")
    add_cache_dir_flag(data)


def add_cache_dir_flag(parser) -> None:
    parser.add_argument("--cache-dir", help="preprocessing cache (default $CXRSWEEP_CACHE or ~/.cache/cxrsweep)")


def add_address_flag(parser) -> None:
    """--address of the commands that run on Ray (a parser or an argument group)."""
    parser.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start one here)")


def add_progress_flag(parser, what: str = "progress lines") -> None:
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help=f"seconds between {what} (default 10)")


def config_from_args(args: argparse.Namespace, *, record_applied: bool = False,
                     flags: dict[str, Any] | None = None, **keys: Any) -> RunConfig:
    """The profile and the preset, then `keys` (the command's own run keys), then the --config
    file's fields, then --set, then `flags` (config fields the command has flags of, e.g. --init-weights) and
    --checkpoint-every-s where the command has it. With `record_applied`, the --config file is a
    `cxrsweep tune` record the caller has read and applies per trial, so no fields are read from it
    here; otherwise a record given to --config is refused with a message (load_config_file)."""
    from protocol.config import make_config, parse_overrides
    from protocol.tuned import load_config_file

    values: dict = {}
    if args.config and not record_applied:
        values.update(load_config_file(args.config))
    values.update(parse_overrides(args.overrides))
    values.update(flags or {})
    if getattr(args, "checkpoint_every_s", None) is not None:
        values["checkpoint_every_s"] = args.checkpoint_every_s
    return make_config(args.profile, values, preset=args.preset, **keys)
