"""A trial's identity includes its data: a sweep into an OUT that holds results of other data
reruns them (and --resume does not continue their checkpoints), the result tables never mix two
versions of a dataset, and the same data at another path is recognised by its content."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from commands.main import main
from protocol.results import read_trials
from sweep.runner import STATE_KEY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SLICE = ["run", "segmentation", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet", "--tasks",
         "lungs", "--folds", "0", "--progress-every", "2", "--retries", "0"]


def _synth(root, seed: int) -> list[str]:
    """`cxrsweep data synth ROOT --seed S` at test size; returns the data flags of `cxrsweep run`."""
    assert main(["data", "synth", str(root), "--n-source", "15", "--n-target", "10", "--source-size", "128",
                 "--target-size", "128", "--seed", str(seed)]) == 0
    return ["--jsrt", str(root / "jsrt"), "--scr", str(root / "scr"), "--cache-dir", str(root.parent / "cache")]


def _summary(printed: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith("[sweep] finished"))


def test_other_data_into_the_same_out_reruns_and_replaces_the_numbers(ray_runtime, tmp_path, capsys):
    out = tmp_path / "out"
    data_a, data_b = _synth(tmp_path / "A", seed=0), _synth(tmp_path / "B", seed=1)
    capsys.readouterr()

    assert main([*SLICE, *data_a, "--out", str(out)]) == 0
    assert "1 completed, 0 reused" in _summary(capsys.readouterr().out)
    first = read_trials(out)
    trial_id = first.trial_id.item()
    recorded_a = json.loads((out / "runs" / trial_id / "trial.json").read_text())["spec"]["data"]

    assert main([*SLICE, *data_b, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 completed, 0 reused" in _summary(printed)
    assert f"{trial_id}: OUT holds it finished on other data" in printed
    second = read_trials(out)
    assert list(second.trial_id) == [trial_id]  # same cell, same config: one row, the new one
    summary = json.loads((out / "runs" / trial_id / "result.json").read_text())
    assert second.test_jaccard_mean.item() == pytest.approx(summary["test_jaccard_mean"])
    assert second.test_jaccard_mean.item() != first.test_jaccard_mean.item()
    recorded_b = json.loads((out / "runs" / trial_id / "trial.json").read_text())["spec"]["data"]
    assert set(recorded_b) == {"jsrt"} and recorded_b != recorded_a

    # The same content at another path (and so another cache key) is the same data: reused.
    moved = tmp_path / "B-moved"
    shutil.copytree(tmp_path / "B", moved)
    moved_flags = ["--jsrt", str(moved / "jsrt"), "--scr", str(moved / "scr"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*SLICE, *moved_flags, "--out", str(out)]) == 0
    assert "0 completed, 1 reused" in _summary(capsys.readouterr().out)
    pd.testing.assert_frame_equal(read_trials(out), second)


def test_resume_with_other_data_starts_the_interrupted_trials_afresh(ray_runtime, tmp_path, capsys, failpoints):
    out = tmp_path / "out"
    data_a, data_b = _synth(tmp_path / "A", seed=0), _synth(tmp_path / "B", seed=1)
    # An interrupted sweep on A: its trial has a Tune experiment and a checkpoint of epoch 1.
    failpoints.fail("segmentation-*", times=-1, at_epoch=1)
    assert main([*SLICE, *data_a, "--out", str(out), "--checkpoint-every-s", "0"]) == 1
    state = json.loads((out / "ray" / "sweep-state.json").read_text())
    assert STATE_KEY in state and set(state["data"]) == {"jsrt"}
    assert list((out / "ray").glob(f"{state[STATE_KEY]}/*/checkpoint_*"))
    failpoints.clear()
    capsys.readouterr()

    assert main([*SLICE, *data_b, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "the interrupted sweep ran on other data" in printed and "resuming Ray Tune experiment" not in printed
    trial_id = read_trials(out).trial_id.item()
    summary = json.loads((out / "runs" / trial_id / "result.json").read_text())
    assert summary["epochs_trained"] == 2  # both epochs on B, nothing continued from A's checkpoint
    assert read_trials(out).status.item() == "ok"


def test_resume_with_a_grown_plan_runs_the_trials_the_experiment_did_not_hold(ray_runtime, tmp_path, capsys,
                                                                              failpoints):
    out = tmp_path / "out"
    data = _synth(tmp_path / "A", seed=0)
    failpoints.fail("segmentation-*", times=1, at_epoch=1)  # the first attempt fails
    assert main([*SLICE, *data, "--out", str(out), "--checkpoint-every-s", "0"]) == 1
    failpoints.clear()
    capsys.readouterr()

    # Fold 1 is not in the restored Tune experiment: it runs in a Tuner of its own after it.
    grown = [*SLICE[:SLICE.index("--folds") + 1], "0,1", *SLICE[SLICE.index("--folds") + 2:]]
    assert main([*grown, *data, "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resuming Ray Tune experiment" in printed and "2 completed" in _summary(printed)
    trials = read_trials(out)
    assert sorted(trials.fold) == [0, 1] and (trials.status == "ok").all()


def test_sweeps_started_in_the_same_second_get_their_own_experiment(monkeypatch):
    """Trials keep their scratch run directories under the experiment's name: two sweeps of one
    trial started in the same second (two xdist workers once did) must not share, and resume
    from, each other's."""
    from sweep import runner

    monkeypatch.setattr(runner.time, "strftime", lambda _: "20261206-221200")
    names = {runner.experiment_name() for _ in range(20)}
    assert len(names) == 20 and all(n.startswith("sweep-20261206-221200-") for n in names)
