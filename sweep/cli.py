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
    "sweep.cli_train",  # train, segment
    "sweep.cli_transfer",  # train-transfer
    "sweep.cli_sweep",  # run, tune, demo
    "analysis.cli",  # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrsweep",
        description="Chest X-ray segmentation and cross-dataset transfer (Oliveira & dos Santos, 2018), swept on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # While a feature area is being built its module may not exist yet; any other
            # import failure (a missing dependency inside it) is a real error.
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        # Bad input: one clear line naming the file and the problem, no traceback.
        print(f"cxrsweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
