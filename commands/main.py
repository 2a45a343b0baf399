"""The `cxrsweep` command. Each feature area registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that provide `register(subparsers)`; each adds its own subcommands.
COMMAND_MODULES = (
    "data_io.cli",  # data synth, data check
    "models.cli",  # models
    "commands.train",  # train, segment
    "commands.transfer",  # train-transfer
    "commands.grid_runs",  # run, tune, demo
    "analysis.cli",  # report
)
# cxrsweep's own packages: a missing module among them is a bug, not a missing dependency.
FIRST_PARTY = ("data_io", "models", "protocol", "engine", "inference", "sweep", "analysis", "commands")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrsweep",
        description="Chest X-ray segmentation and cross-dataset transfer (Oliveira & dos Santos, 2018), swept on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        # No import error is swallowed: a broken install must not hide a command. A missing
        # dependency is named by `main`; a missing cxrsweep module keeps its traceback.
        importlib.import_module(name).register(sub)
    return parser


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """The line to print when `exc` is a dependency that is not installed; None when the missing
    module is cxrsweep's own (a bug, which keeps its traceback)."""
    if exc.name is None or exc.name.split(".")[0] in FIRST_PARTY:
        return None
    return (f"cxrsweep: error: the Python package {exc.name.split('.')[0]!r} is not installed ({exc}); "
            "install cxrsweep with its dependencies (pip install -e .)")


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc)
        if message is None:
            raise
        print(f"{message} (needed by `cxrsweep {args.command}`)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        # Bad input: one clear line naming the file and the problem, no traceback.
        print(f"cxrsweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
