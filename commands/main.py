"""The `cxrsweep` command. Each feature area registers its own subcommands.

How a command ends: 0, or the command's own code (`run`: 1 when a trial failed); a `UserError`
(errors/: bad flags, config values, files or datasets) prints one line "cxrsweep: error: ..." and
exits 2; anything else is a bug: its traceback goes to the command's log and, with -v, to the
console, and the command exits EXIT_BUG. The log of a command that writes a local OUT is
OUT/logs/cxrsweep.log (appended to, created on the first line logged); a command without one
(`models`, `data check`, an OUT in object storage) prints a bug's traceback on the console, where
nothing else would keep it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from errors import UserError

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
FIRST_PARTY = ("errors", "data_io", "models", "protocol", "engine", "inference", "sweep", "analysis", "commands")

EXIT_USER_ERROR = 2  # argparse's own code for a bad command line
EXIT_BUG = 70  # sysexits' EX_SOFTWARE: an error cxrsweep did not expect
LOG_FOLDER, LOG_NAME = "logs", "cxrsweep.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("cxrsweep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrsweep",
        description="Chest X-ray segmentation and cross-dataset transfer (Oliveira & dos Santos, 2018), swept on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _add_verbose_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        # No import error is swallowed: a broken install must not hide a command. A missing
        # dependency is named by `main`; a missing cxrsweep module keeps its traceback.
        importlib.import_module(name).register(sub)
    for command in _subparsers(parser):
        # SUPPRESS: a subcommand without -v leaves the value `cxrsweep -v COMMAND` set.
        _add_verbose_flag(command, default=argparse.SUPPRESS)
    return parser


def _add_verbose_flag(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging, and a bug's traceback on the console (anywhere on the line)")


def _subparsers(parser: argparse.ArgumentParser):
    """Every subcommand's parser, nested ones (`data synth`) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):
                yield command
                yield from _subparsers(command)


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """The line to print when `exc` is a dependency that is not installed; None when the missing
    module is cxrsweep's own (a bug, which keeps its traceback)."""
    if exc.name is None or exc.name.split(".")[0] in FIRST_PARTY:
        return None
    return (f"cxrsweep: error: the Python package {exc.name.split('.')[0]!r} is not installed ({exc}); "
            "install cxrsweep with its dependencies (pip install -e .)")


def log_path(args: argparse.Namespace) -> Path | None:
    """OUT/logs/cxrsweep.log of a command that has a local OUT; None without one (no --out, an
    object-storage URI, a dry run, which writes nothing)."""
    out = getattr(args, "out", None)
    if out is None or getattr(args, "dry_run", False):
        return None
    from protocol.storage import is_uri  # here: pandas and pyarrow load with it, which a dry run need not

    if is_uri(str(out)):
        return None
    return Path(out) / LOG_FOLDER / LOG_NAME


class CommandLog(logging.FileHandler):
    """The command's log file, opened (folder included) when the first line is logged, so a
    command that logs nothing leaves no file; each command's lines start with the command line."""

    def __init__(self, path: Path, argv: list[str]):
        super().__init__(path, delay=True, encoding="utf-8")
        self.argv = argv
        self.out = path.parent.parent
        self.new_out = not self.out.exists()
        self.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))

    def discard_if_alone(self) -> bool:
        """A refused command leaves no OUT behind: when OUT did not exist before it and holds
        nothing but this log, remove both. Whether it did."""
        log = Path(self.baseFilename)
        if not self.new_out or not self.out.is_dir():
            return False
        if sorted(self.out.rglob("*")) != sorted(p for p in (log.parent, log) if p.exists()):
            return False
        self.close()
        log.unlink(missing_ok=True)
        log.parent.rmdir()
        self.out.rmdir()
        return True

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        stream = super()._open()
        stream.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} cxrsweep {version()}: "
                     f"cxrsweep {shlex.join(self.argv)}\n")
        return stream


def setup_logging(args: argparse.Namespace, argv: list[str]) -> CommandLog | None:
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)  # basicConfig sets it only where the root logger had no handler yet
    path = log_path(args)
    if path is None:
        return None
    handler = CommandLog(path, argv)
    handler.setLevel(level)
    logging.getLogger().addHandler(handler)
    return handler


def report_bug(args: argparse.Namespace, log: CommandLog | None) -> int:
    """The exception being handled is a bug: its traceback into the log (and on the console with
    -v, or when there is no log to keep it), one line that says where it is otherwise."""
    exc = sys.exc_info()[1]
    if log is not None:
        record = logging.LogRecord("cxrsweep", logging.ERROR, __file__, 0,
                                   f"bug in `cxrsweep {args.command}`", (), sys.exc_info())
        log.handle(record)
        log.flush()
    if args.verbose or log is None:
        traceback.print_exc()
    where = f"the traceback is in {log.baseFilename}" if log is not None else "traceback above"
    print(f"cxrsweep: internal error: {type(exc).__name__}: {exc} ({where}"
          f"{'' if args.verbose or log is None else '; -v prints it here'}). This is a bug in cxrsweep, "
          "not in what you asked: please report it with the traceback.", file=sys.stderr)
    return EXIT_BUG


def report_user_error(exc: UserError, log: CommandLog | None) -> int:
    message = f"cxrsweep: error: {exc}"
    if log is not None and log.stream is not None and not log.discard_if_alone():
        log.handle(logging.LogRecord("cxrsweep", logging.ERROR, __file__, 0, message, (), None))
    print(message, file=sys.stderr)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_USER_ERROR
    args = parser.parse_args(argv)
    log = setup_logging(args, argv)
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        message = missing_dependency(exc)
        if message is None:
            return report_bug(args, log)
        print(f"{message} (needed by `cxrsweep {args.command}`)", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout left (`cxrsweep ... | head`): nothing more to say, and nobody to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command whose reader left
    except UserError as exc:
        return report_user_error(exc, log)
    except Exception:
        return report_bug(args, log)
    finally:
        if log is not None:
            logging.getLogger().removeHandler(log)
            log.close()


if __name__ == "__main__":
    sys.exit(main())
