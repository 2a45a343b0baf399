"""What the user can fix is one line and exit 2; anything else is a bug: its traceback goes to the
command's log (OUT/logs/cxrsweep.log) and, with -v anywhere on the line, to the console."""
import logging

import pytest

from commands import main as cli
from errors import MissingInput, UserError


def _with_command(monkeypatch, name: str, func):
    """The real command line with `cxrsweep NAME` running `func` instead of its own code."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[name].set_defaults(func=func)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


def _train_argv(tmp_path, *extra):
    return ["train", "--jsrt", "J", "--scr", "S", "--out", str(tmp_path / "run"), *extra]


def _raise_value_error():
    raise ValueError("boom: a bug, not the user's input")


def test_a_bug_keeps_its_traceback_in_the_log_and_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    def command(args):
        logging.getLogger("engine.somewhere").info("epoch 1 of a run about to hit a bug")
        _raise_value_error()

    _with_command(monkeypatch, "train", command)
    assert cli.main(_train_argv(tmp_path)) == cli.EXIT_BUG
    err = capsys.readouterr().err
    log = tmp_path / "run" / "logs" / "cxrsweep.log"
    assert "Traceback" not in err  # without -v the console gets one line ...
    assert "cxrsweep: internal error: ValueError: boom: a bug, not the user's input" in err
    assert str(log) in err and "-v prints it here" in err
    text = log.read_text()  # ... and the log everything
    assert "cxrsweep train --jsrt J --scr S --out" in text.splitlines()[0]
    assert "epoch 1 of a run about to hit a bug" in text
    assert "Traceback (most recent call last)" in text and "in _raise_value_error" in text
    assert "ValueError: boom: a bug, not the user's input" in text


@pytest.mark.parametrize("where", ["end", "start"])
def test_verbose_anywhere_on_the_line_prints_the_bugs_traceback(where, monkeypatch, tmp_path, capsys):
    def command(args):
        _raise_value_error()

    _with_command(monkeypatch, "train", command)
    argv = _train_argv(tmp_path, "-v") if where == "end" else ["-v", *_train_argv(tmp_path)]
    assert cli.main(argv) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in _raise_value_error" in err
    assert "ValueError: boom" in (tmp_path / "run" / "logs" / "cxrsweep.log").read_text()


def test_a_bug_in_a_command_without_a_log_prints_its_traceback(monkeypatch, capsys):
    def command(args):
        _raise_value_error()

    _with_command(monkeypatch, "models", command)
    assert cli.main(["models"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "internal error: ValueError: boom" in err


@pytest.mark.parametrize("error", [UserError("--width -1: must be positive"),
                                   MissingInput("/data/jsrt: --jsrt folder does not exist")])
def test_a_user_error_is_one_line_and_exit_2_even_with_verbose(error, monkeypatch, tmp_path, capsys):
    def command(args):
        raise error

    _with_command(monkeypatch, "train", command)
    assert cli.main(_train_argv(tmp_path, "-v")) == 2
    err = capsys.readouterr().err
    assert err == f"cxrsweep: error: {error}\n"
    assert not (tmp_path / "run").exists()  # a refused command that logged nothing leaves no log


def test_a_refused_command_leaves_no_out_behind_even_when_it_logged(monkeypatch, tmp_path, capsys):
    def command(args):
        logging.getLogger("data_io.cache").info("preprocessing jsrt: 15 cases")
        raise UserError("tuned config refused, it would configure trials with their own test images")

    _with_command(monkeypatch, "train", command)
    assert cli.main(_train_argv(tmp_path)) == 2
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # an OUT that was there before keeps the log, and the reason
    assert cli.main(_train_argv(tmp_path)) == 2
    text = (tmp_path / "run" / "logs" / "cxrsweep.log").read_text()
    assert "preprocessing jsrt" in text and "cxrsweep: error: tuned config refused" in text
    assert text.count("==== ") == 1


def test_verbose_is_accepted_after_any_subcommand():
    parser = cli.build_parser()
    assert parser.parse_args(["models", "-v"]).verbose
    assert parser.parse_args(["-v", "models"]).verbose
    assert parser.parse_args(["data", "check", "--jsrt", "J", "--verbose"]).verbose
    assert not parser.parse_args(["models"]).verbose


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cxrsweep {version('cxrsweep')}"


def test_a_missing_dataset_folder_is_one_line_and_exit_2(tmp_path, capsys):
    """Through the real code: data_io names the folder it did not find."""
    code = cli.main(["train", "--profile", "smoke", "--jsrt", str(tmp_path / "nowhere"), "--scr", str(tmp_path),
                     "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cxrsweep: error: ") and "nowhere" in err and "Traceback" not in err
