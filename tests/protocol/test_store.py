"""The output store without Ray: what counts as finished, and how rows are rebuilt."""
import json

import pytest

from protocol.collect import write_results
from protocol.config import make_config
from protocol.grid import build_grid
from protocol.results import read_images, read_trials
from protocol.store import RunStore


def _specs():
    grid = build_grid("all", make_config("smoke"), models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["finetune", "scratch"], fractions=[0, 5])
    return grid


def test_only_marked_folders_become_rows(tmp_path):
    grid = _specs()
    store = RunStore(tmp_path)
    segmentation = next(t for t in grid.runnable() if t.config.experiment == "segmentation")
    scratch = next(t for t in grid.runnable() if t.config.method == "scratch")
    finetune_at_zero = next(t for t in grid.not_applicable() if t.config.method == "finetune")
    # A run killed before it was published: an engine result but no trial.json.
    half = tmp_path / "runs" / segmentation.trial_id
    half.mkdir(parents=True)
    (half / "result.json").write_text(json.dumps({"test_jaccard_mean": 0.9}))
    store.record_failure(scratch, "RuntimeError: out of memory")
    store.record_not_applicable(finetune_at_zero)
    assert write_results(store) == (2, 0)
    trials = read_trials(tmp_path).set_index("trial_id")
    assert segmentation.trial_id not in trials.index  # nothing half-written is reported
    assert trials.status[scratch.trial_id] == "failed" and "out of memory" in trials.error[scratch.trial_id]
    assert trials.status[finetune_at_zero.trial_id] == "not_applicable"
    assert trials.cfg_epochs[scratch.trial_id] == scratch.config.epochs  # every config field recorded
    assert json.loads(trials.config_json[scratch.trial_id]) == scratch.config.to_dict()
    assert read_images(tmp_path).empty
    assert not store.is_complete(segmentation) and store.failure_of(scratch).startswith("RuntimeError")


def test_publish_is_all_or_nothing_and_replaces_a_failure(tmp_path):
    grid = _specs()
    store = RunStore(tmp_path / "out")
    spec = next(t for t in grid.runnable() if t.config.method == "scratch")
    store.record_failure(spec, "first attempt failed")
    run_dir = tmp_path / "scratch" / spec.trial_id
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x" * 10)
    (run_dir / "result.json").write_text("{}")
    store.publish(spec, run_dir, {"node_id": "n1"})
    published = tmp_path / "out" / "runs" / spec.trial_id
    assert store.is_complete(spec) and store.failure_of(spec) is None
    assert sorted(p.name for p in published.iterdir()) == ["result.json", "trial.json"]  # no training state
    store.record_failure(spec, "a later failure")
    assert store.failure_of(spec) is None  # a finished result is never overwritten by a failure


def test_bad_storage_uri_names_the_flag():
    with pytest.raises(ValueError, match="--out nosuchscheme://bucket"):
        RunStore("nosuchscheme://bucket/path")


def test_qualitative_runs_are_kept_but_never_rows(tmp_path):
    from protocol.grid import QUALITATIVE

    grid = build_grid("transfer", make_config("smoke"), tasks=["heart", "clavicles"], repetitions=[0],
                      methods=["proposed"], fractions=[0])
    heart, clavicles = sorted((t for t in grid.runnable() if t.kind == QUALITATIVE), key=lambda t: t.config.task,
                              reverse=True)
    store = RunStore(tmp_path / "out")
    run_dir = tmp_path / "run"
    (run_dir / "overlays").mkdir(parents=True)
    (run_dir / "overlays" / "MCUCXR_0001_0.png").write_bytes(b"png")
    (run_dir / "result.json").write_text(json.dumps({"n_test_images": 0, "config": heart.config.to_dict()}))
    store.publish(heart, run_dir, {"node_id": "n1"})
    store.record_failure(clavicles, "RuntimeError: boom")
    assert store.is_complete(heart) and store.trial_dir(heart).endswith(f"runs/{heart.trial_id}")
    assert (tmp_path / "out" / "runs" / heart.trial_id / "overlays" / "MCUCXR_0001_0.png").is_file()
    assert write_results(store) == (0, 0)
    assert store.failure_of(clavicles) == "RuntimeError: boom"
