"""The sweep on a real local Ray runtime: rows in both Parquet files, reuse, retries,
failures, fractional-GPU packing. Trials are smoke-profile U-Nets on tiny phantoms."""
from __future__ import annotations

import json


import pandas as pd
import pytest

from sweep.config import make_config
from sweep.grid import build_grid
from sweep.results import read_images, read_trials
from sweep.runner import INJECT_FAILURE_ENV, SweepOptions, run_grid

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _grid(folds, **overrides):
    base = make_config("smoke", {"num_threads": 1, **overrides})
    return build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=folds)


def _options(out, **kw):
    return SweepOptions(out=str(out), cpus_per_trial=1, progress_every_s=2, **kw)


def test_smoke_grid_rows_and_reuse(ray_runtime, data_paths, tmp_path):
    grid = _grid([0, 1])
    lines: list[str] = []
    outcome = run_grid(grid, data_paths, _options(tmp_path), say=lines.append)
    assert outcome.ok and sorted(outcome.completed) == sorted(grid.trials)
    trials, images = read_trials(tmp_path), read_images(tmp_path)
    assert sorted(trials.trial_id) == sorted(grid.trials)
    assert (trials.status == "ok").all() and trials.test_jaccard_mean.between(0, 1).all()
    assert trials.node_id.notna().all() and (trials.device == "cpu").all()
    # One image row per test image of each trial, as the trial itself wrote them.
    for trial_id in grid.trials:
        own = pd.read_parquet(tmp_path / "runs" / trial_id / "images.parquet")
        mine = images[images.trial_id == trial_id]
        assert len(mine) == len(own) == trials.set_index("trial_id").n_test_images[trial_id] > 0
        assert sorted(mine.image_id) == sorted(own.image_id)
    assert not images.duplicated(["trial_id", "image_id"]).any()
    assert any("running" in line and "pending" in line and "ETA" in line for line in lines)

    # A rerun reuses every finished trial: nothing runs, no row is duplicated or lost.
    again = run_grid(grid, data_paths, _options(tmp_path), say=lines.append)
    assert again.completed == [] and sorted(again.reused) == sorted(grid.trials)
    assert read_trials(tmp_path).equals(trials)
    assert len(read_images(tmp_path)) == len(images)


def test_a_trial_that_fails_once_is_retried_from_its_checkpoint(ray_runtime, data_paths, tmp_path, monkeypatch):
    grid = _grid([2])
    (trial_id,) = grid.trials
    monkeypatch.setenv(INJECT_FAILURE_ENV, f"{trial_id}:1:1")
    outcome = run_grid(grid, data_paths, _options(tmp_path, retries=1), say=lambda line: None)
    assert outcome.ok and outcome.completed == [trial_id]
    assert len(list((tmp_path / "ray" / "injected-failures").iterdir())) == 1
    # The retry restored epoch 1 from the Tune checkpoint and trained only epoch 2.
    summary = json.loads((tmp_path / "runs" / trial_id / "result.json").read_text())
    assert summary["epochs_trained"] == 1
    assert read_trials(tmp_path).status.tolist() == ["ok"]


def test_a_trial_that_always_fails_fails_the_command(ray_runtime, data_flags, tmp_path, monkeypatch, capsys):
    from sweep.cli import main

    grid = _grid([3])
    (trial_id,) = grid.trials
    monkeypatch.setenv(INJECT_FAILURE_ENV, f"{trial_id}:always:1")
    code = main(["run", "segmentation", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet",
                 "--tasks", "lungs", "--folds", "3", "--out", str(tmp_path), "--retries", "1",
                 "--progress-every", "5", *data_flags])
    assert code == 1
    assert f"FAILED {trial_id}: InjectedFailure" in capsys.readouterr().out
    trials = read_trials(tmp_path)
    assert trials.status.tolist() == ["failed"] and "injected failure 2 of always" in trials.error[0]
    assert read_images(tmp_path).empty  # nothing half-written is reported
    assert len(list((tmp_path / "ray" / "injected-failures").iterdir())) == 2  # first attempt + one retry


def test_four_trials_share_one_logical_gpu(ray_runtime, data_paths, tmp_path):
    grid = _grid([0, 1, 2, 3], seed=7, epochs=6)
    outcome = run_grid(grid, data_paths, _options(tmp_path, gpus_per_trial=0.25), say=lambda line: None)
    assert outcome.ok
    infos = [json.loads((tmp_path / "runs" / t / "trial.json").read_text()) for t in grid.trials]
    assert all(info["gpu_ids"] and info["gpu_ids"] == infos[0]["gpu_ids"] for info in infos)
    trials = read_trials(tmp_path)
    # Every trial started before any trial finished: all four ran at the same time.
    assert trials.started_at.max() < trials.finished_at.min(), trials[["trial_id", "started_at", "finished_at"]]


def test_resources_fall_back_to_cpu_only_when_no_gpu_can_appear():
    from sweep.runner import plan_resources

    lines: list[str] = []
    assert plan_resources(0.5, 1, cluster_gpus=0, largest_node_cpus=4, say=lines.append) == {"cpu": 1.0, "gpu": 0.0}
    assert "no GPUs" in lines[0] and "on the CPU" in lines[0]
    # An autoscaler that can add GPU workers keeps the request (and says so).
    assert plan_resources(0.25, 1, 0, 0, ["gpu.a10g.spot"], say=lines.append)["gpu"] == 0.25
    assert "autoscaler" in lines[1]
    with pytest.raises(ValueError, match="--gpus-per-trial 1.5"):
        plan_resources(1.5, 1, 1, 4)
    with pytest.raises(ValueError, match="--cpus-per-trial 8"):
        plan_resources(0, 8, 0, 4)
