"""`--dry-run` of run, tune and demo: the trials by kind and profile, what each asks for, the
projected GPU-hours and the effective config, in seconds, with no data, no Ray and no files."""
import json
import re
import subprocess
import sys
import time

import pytest

from commands import main as cli

# Runs the commands in a fresh interpreter and reports what it imported.
SCRIPT = """
import contextlib, io, json, sys, time
from commands.main import main
runs = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    runs.append({"code": code, "out": out.getvalue(), "seconds": time.perf_counter() - started})
print(json.dumps({"runs": runs, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")),
                  "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry") / "never-written"
    argvs = [["run", "all", "--preset", "paper", "--dry-run"],
             ["run", "segmentation", "--profile", "smoke", "--dry-run", "--out", str(out), "--gpus-per-trial", "1"],
             ["tune", "--method", "proposed", "--repetitions", "0,1", "--dry-run", "--preset", "paper"],
             ["demo", "--dry-run", "--out", str(out)]]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return {"wall_s": time.perf_counter() - started, "out": out, **json.loads(done.stdout)}


def test_the_paper_grid_in_seconds_without_ray(dry_runs):
    paper = dry_runs["runs"][0]
    assert paper["code"] == 0 and paper["seconds"] < 10 and dry_runs["wall_s"] < 30
    text = paper["out"]
    assert "cxrsweep run all: 207 trials to run, 45 cells not applicable" in text
    for row in ("Table I: unet", "Table II: proposed", "translator warm-up", "Fig. 9 run"):
        assert row in text, row
    assert "GPU-hours at 2 trial(s) per GPU" in text and "wall time at least" in text
    assert "each trial asks for 1 CPU and 0.5 GPU" in text and "fuse 1" in text
    assert re.search(r"^  label_budget += 'paper' +\(preset paper\)$", text, re.M)
    assert dry_runs["ray"] == [] and not dry_runs["torch"]


def test_the_trial_counts_add_up_and_nothing_is_written(dry_runs):
    smoke = dry_runs["runs"][1]
    lines = [line.split() for line in smoke["out"].splitlines() if line.startswith("  Table I: ")]
    # 3 models x 3 tasks x 5 folds; each row: "Table", "I:", model, profile, recipe, count, epochs, hours
    assert sum(int(row[5]) for row in lines) == 45 and {row[3] for row in lines} == {"smoke"}
    assert "1 GPU" in smoke["out"] and "projected GPU-hours: none" in smoke["out"]  # smoke: no measured figures
    assert not dry_runs["out"].exists()


def test_tune_and_demo_dry_runs(dry_runs):
    tune, demo = dry_runs["runs"][2], dry_runs["runs"][3]
    assert tune["code"] == 0 and "2 search(es) of 20 sample(s) each, after 4 dependency trial(s)" in tune["out"]
    assert "at most" in tune["out"] and "GPU-hours" in tune["out"]
    assert demo["code"] == 0 and "cxrsweep demo: 71 trials to run" in demo["out"]


def test_without_dry_run_out_is_required(capsys):
    assert cli.main(["run", "segmentation", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err == "cxrsweep: error: the following argument is required: --out " \
                                      "(cxrsweep run --help)\n"


def test_a_dry_run_checks_the_config_and_the_flags_too(capsys):
    assert cli.main(["run", "all", "--dry-run", "--set", "lr=-1"]) == 2
    assert capsys.readouterr().err == "cxrsweep: error: lr must be > 0, got -1.0\n"
    with pytest.raises(SystemExit) as refused:
        cli.main(["run", "all", "--dry-run", "--gpus-per-trial", "1.5"])
    assert refused.value.code == 2
    assert "use a fraction in (0, 1] or a whole number of GPUs, got 1.5" in capsys.readouterr().err
