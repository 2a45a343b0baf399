"""`cxrsweep run --fuse K` on a real local Ray runtime: the members of one fused Tune trial keep
their own trials, rows, image rows, checkpoints and failures."""
from __future__ import annotations

import json

import pytest

from protocol.config import make_config
from protocol.grid import build_grid
from protocol.results import read_images, read_trials
from sweep.options import SweepOptions
from sweep.runner import run_grid

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_fused_group_keeps_each_member_and_fails_one_alone(ray_runtime, data_paths, tmp_path, failpoints):
    """Three folds of one Table I cell fused into one Tune trial (the fourth fold goes alone:
    --fuse 3); fold 1 raises at its epoch 2 (a failpoint, every attempt), so it is recorded
    failed with its own error while its siblings finish, and no retry reruns them."""
    base = make_config("smoke", {"num_threads": 1, "epochs": 3, "checkpoint_every_s": 0})
    grid = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0, 1, 2, 3])
    failing = next(t for t in grid.trials if "fold1" in t)
    failpoints.fail(failing, times=-1, at_epoch=2)
    lines: list[str] = []
    outcome = run_grid(grid, data_paths, SweepOptions(out=str(tmp_path), cpus_per_trial=1, progress_every_s=60,
                                                      fuse=3), say=lines.append)
    assert set(outcome.failed) == {failing} and "InjectedFailure" in outcome.failed[failing]
    assert sorted(outcome.completed) == sorted(t for t in grid.trials if t != failing)

    trials, images = read_trials(tmp_path), read_images(tmp_path)
    assert sorted(trials.trial_id) == sorted(grid.trials) and trials.trial_id.is_unique
    rows = trials.set_index("trial_id")
    assert rows.loc[failing, "status"] == "failed" and "InjectedFailure" in rows.loc[failing, "error"]
    ok = trials[trials.status == "ok"]
    assert len(ok) == 3 and ok.test_jaccard_mean.between(0, 1).all()
    assert sorted(images.trial_id.unique()) == sorted(ok.trial_id)
    assert len(images) == ok.n_test_images.sum() and not images.duplicated(["trial_id", "image_id"]).any()

    fused = [t for t in ok.trial_id if json.loads((tmp_path / "runs" / t / "trial.json").read_text()).get("fused_with")]
    assert len(fused) == 2, "two members of the fused group finished"
    for trial_id in fused:
        info = json.loads((tmp_path / "runs" / trial_id / "trial.json").read_text())
        assert failing in info["fused_with"] and info["checkpoints"]["count"] == 3  # one per epoch, its own
        summary = json.loads((tmp_path / "runs" / trial_id / "result.json").read_text())
        assert summary["epochs_trained"] == 3
    # The failing member raised once per attempt of its group's one Tune trial: no retry reran it.
    marks = sorted(p.name for p in (tmp_path / "ray" / "injected-failures").iterdir())
    assert marks == [f"{failing}.1"]
    assert any(line.startswith(f"[sweep] FAILED {failing} (in fused group") for line in lines), lines
    assert sum(line.startswith("[sweep] done ") for line in lines) == 3, lines


def test_table_two_runs_fuse_by_method_after_their_m_a(ray_runtime, data_paths, tmp_path):
    """finetune, scratch, self-training and the proposed method at 0, 50 and 100 % labels with
    --fuse 4: the 0 % finetune and scratch cells are not applicable (nothing to train on); once
    M_A is published, the two other finetune cells go out as one fused Tune trial (their epochs
    replay the source images), the two scratch cells as another and the three self-training runs
    as a third, and once the translator is warmed the three proposed runs as a fourth
    (engine.fused.proposed); each member is published as its own trial."""
    base = make_config("smoke", {"num_threads": 1, "epochs": 2, "transfer_epochs": 2, "self_training_epochs": 2})
    grid = build_grid("transfer", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["finetune", "scratch", "self_training", "proposed"], fractions=[0, 50, 100])
    lines: list[str] = []
    outcome = run_grid(grid, data_paths, SweepOptions(out=str(tmp_path), cpus_per_trial=1, progress_every_s=60,
                                                      fuse=4), say=lines.append)
    assert outcome.ok, outcome.failed
    trials = read_trials(tmp_path).set_index("trial_id")
    runs = trials[trials.experiment == "transfer"]
    assert sorted(zip(runs.method, runs.label_fraction, runs.status)) == [
        ("finetune", 0.0, "not_applicable"), ("finetune", 50.0, "ok"), ("finetune", 100.0, "ok"),
        ("proposed", 0.0, "ok"), ("proposed", 50.0, "ok"), ("proposed", 100.0, "ok"),
        ("scratch", 0.0, "not_applicable"), ("scratch", 50.0, "ok"), ("scratch", 100.0, "ok"),
        ("self_training", 0.0, "ok"), ("self_training", 50.0, "ok"), ("self_training", 100.0, "ok")]
    ran = runs[runs.status == "ok"]
    assert ran.test_jaccard_mean.between(0, 1).all()
    for trial_id in ran.index:
        info = json.loads((tmp_path / "runs" / trial_id / "trial.json").read_text())
        siblings = set(ran.index[ran.method == ran.method[trial_id]])
        assert sorted(info["fused_with"]) == sorted(siblings - {trial_id}), trial_id
        summary = json.loads((tmp_path / "runs" / trial_id / "result.json").read_text())
        assert summary["epochs_trained"] == 2 and summary["config"]["method"] == ran.loc[trial_id, "method"]
    m_a_done = trials[trials.experiment == "segmentation"].finished_at.max()
    assert (ran.started_at >= m_a_done).all()
    assert sum(line.startswith("[sweep] done transfer-") and "fused group" in line for line in lines) == 10, lines
