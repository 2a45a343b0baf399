"""The command line is assembled from every feature area; each must import and register."""
import subprocess
import sys

from commands import main as cli


def test_every_command_module_registers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = set(sub.choices)
    for command in ("data", "models", "train", "segment", "train-transfer", "run", "tune", "demo", "report"):
        assert command in registered, f"'cxrsweep {command}' is not registered"


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "commands.main", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cxrsweep" in out.stdout


def test_a_broken_command_module_is_not_hidden(monkeypatch):
    """A command module that fails to import stops the command line with its error; it is
    never silently left out (a broken install would otherwise lose a command without a word)."""
    import pytest

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "sweep.no_such_module"))
    with pytest.raises(ModuleNotFoundError, match="sweep.no_such_module"):
        cli.main(["models"])


def test_a_missing_dependency_is_named(monkeypatch, capsys):
    def needs_absent_package(args):
        import cxrsweep_absent_dependency  # noqa: F401

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["models"].set_defaults(func=needs_absent_package)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert "'cxrsweep_absent_dependency' is not installed" in err and "cxrsweep models" in err


def test_training_commands_share_one_set_of_config_and_data_flags(tmp_path):
    """train, train-transfer, run and tune spell the config flags alike, default the profile by one
    rule, and read --config (or its former name --config-from) into the same config."""
    from commands.common import DEFAULT_PROFILE, config_from_args

    fields = tmp_path / "fields.json"
    fields.write_text('{"lr": 0.5}')
    parser = cli.build_parser()
    data = ["--jsrt", "J", "--scr", "S", "--out", str(tmp_path)]
    commands = {"train": data, "train-transfer": data, "run": ["segmentation", *data], "tune": data}
    for command, rest in commands.items():
        for spelling in ("--config", "--config-from"):
            args = parser.parse_args([command, spelling, str(fields), "--set", "epochs=3", *rest])
            assert args.profile == DEFAULT_PROFILE[command]
            assert (args.jsrt, args.scr, args.cache_dir) == ("J", "S", None)
            cfg = config_from_args(args)
            assert (cfg.profile, cfg.lr, cfg.epochs) == (DEFAULT_PROFILE[command], 0.5, 3), command
    from commands.grid_runs import demo_recipes
    from protocol.config import make_config

    demo = parser.parse_args(["demo", "--out", str(tmp_path)])
    assert demo.profile == DEFAULT_PROFILE["demo"] == "demo"
    # the paper's protocol and ours side by side; the paper preset runs the paper's alone
    assert demo_recipes(demo, make_config("demo")) == ["none", "robust"]
    paper = parser.parse_args(["demo", "--out", str(tmp_path), "--preset", "paper"])
    assert demo_recipes(paper, make_config("demo", preset="paper")) == ["none"]
    assert (DEFAULT_PROFILE["train"], DEFAULT_PROFILE["run"]) == ("cpu", "paper")  # unchanged defaults
