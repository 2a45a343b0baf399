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


def test_all_grid_rows_dependency_order_retry_and_reuse(ray_runtime, data_paths, tmp_path, monkeypatch):
    """`all` on one cell of Table I and three transfer methods at 0 % labels, with M_A failing once."""
    base = make_config("smoke", {"num_threads": 1})
    grid = build_grid("all", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["proposed", "finetune", "source_only"], fractions=[0])
    segmentation = next(t for t in grid.trials.values() if t.config.experiment == "segmentation")
    warmup = next(t for t in grid.trials.values() if not t.has_row)
    monkeypatch.setenv(INJECT_FAILURE_ENV, f"{segmentation.trial_id}:1:1")
    lines: list[str] = []
    outcome = run_grid(grid, data_paths, _options(tmp_path, retries=1), say=lines.append)
    assert outcome.ok, outcome.failed

    trials, images = read_trials(tmp_path), read_images(tmp_path)
    rows = {(r.experiment, r.method): r for r in trials.itertuples()}
    assert sorted(rows) == [("segmentation", "supervised"), ("transfer", "finetune"), ("transfer", "proposed"),
                            ("transfer", "source_only")]
    assert rows["transfer", "finetune"].status == "not_applicable" and "0 %" in rows["transfer", "finetune"].error
    ok = trials[trials.status == "ok"]
    assert len(ok) == 3 and ok.test_jaccard_mean.between(0, 1).all() and ok.node_id.notna().all()
    # One image row per test image of each finished trial, exactly as the trial wrote them.
    assert sorted(images.trial_id.unique()) == sorted(ok.trial_id)
    for row in ok.itertuples():
        own = pd.read_parquet(tmp_path / "runs" / row.trial_id / "images.parquet")
        assert sorted(images[images.trial_id == row.trial_id].image_id) == sorted(own.image_id)
        assert len(own) == row.n_test_images > 0
    assert not images.duplicated(["trial_id", "image_id"]).any()

    # M_A failed once at epoch 1, was retried from its checkpoint and trained only epoch 2.
    assert len(list((tmp_path / "ray" / "injected-failures").iterdir())) == 1
    summary = json.loads((tmp_path / "runs" / segmentation.trial_id / "result.json").read_text())
    assert summary["epochs_trained"] == 1
    # Dependencies finished before any transfer trial started.
    warmup_info = json.loads((tmp_path / "translators" / warmup.trial_id / "trial.json").read_text())
    dependencies_done = max(rows["segmentation", "supervised"].finished_at, warmup_info["finished_at"])
    assert ok[ok.experiment == "transfer"].started_at.min() >= dependencies_done
    assert any("running" in line and "pending" in line and "ETA" in line for line in lines)

    # A rerun reuses every finished trial: nothing runs, no row is duplicated or lost.
    monkeypatch.delenv(INJECT_FAILURE_ENV)
    again = run_grid(grid, data_paths, _options(tmp_path), say=lines.append)
    assert again.completed == [] and len(again.reused) == len(grid.runnable())
    assert read_trials(tmp_path).equals(trials)
    assert read_images(tmp_path).equals(images)


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
    grid = _grid([0, 1, 2, 3], seed=7, epochs=5)
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


def test_tune_writes_a_best_config_that_run_applies(ray_runtime, data_paths, tmp_path):
    from sweep.config import load_config_file
    from sweep.tuning import SCORE, run_tuning, tuned_cell

    base = make_config("smoke", {"num_threads": 1})
    specs = tuned_cell(base, "unet", "lungs", 0, None, 0.0, "montgomery", 0)
    best_file = tmp_path / "best.json"
    record = run_tuning(specs, data_paths, _options(tmp_path), n_trials=2, best_file=best_file, say=lambda line: None)
    assert set(record["config"]) == {"lr", "weight_decay", "batch_size"} and record["trials"] == 2
    # The score is the best validation Jaccard a tuning trial reported, never a test figure.
    published = [json.loads(p.read_text()) for p in (tmp_path / "tune" / "runs").glob("*/result.json")]
    assert published and any(record["score"]["value"] == pytest.approx(p["val_jaccard"]) for p in published)
    assert record["score"]["metric"] == SCORE
    applied = make_config("smoke", load_config_file(best_file))
    assert applied.lr == record["config"]["lr"] and applied.batch_size == record["config"]["batch_size"]
    assert not (tmp_path / "results").exists()  # tuning trials never enter the result tables
