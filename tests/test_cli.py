"""The command line is assembled from every feature area; each must import and register."""
import subprocess
import sys

from sweep import cli


def test_every_command_module_registers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = set(sub.choices)
    for command in ("data", "models", "train", "segment", "train-transfer", "run", "tune", "demo", "report"):
        assert command in registered, f"'cxrsweep {command}' is not registered"


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "sweep.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cxrsweep" in out.stdout
