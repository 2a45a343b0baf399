"""The sweep on a real local Ray runtime: rows in both Parquet files, reuse, retries,
failures, fractional-GPU packing. Trials are smoke-profile U-Nets on tiny phantoms."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

from protocol.config import make_config
from protocol.grid import QUALITATIVE, Grid, build_grid
from protocol.results import read_images, read_trials
from sweep.options import SweepOptions
from sweep.runner import run_grid

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _grid(folds, **overrides):
    base = make_config("smoke", {"num_threads": 1, **overrides})
    return build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=folds)


def _options(out, **kw):
    return SweepOptions(out=str(out), cpus_per_trial=1, progress_every_s=2, **kw)


def _tensorboard_scalars(paths) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of TensorBoard event files, read without TensorBoard: TFRecord framing
    (8-byte length, its 4-byte CRC, the serialised Event, its 4-byte CRC)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in paths:
        data, at = Path(path).read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_all_grid_rows_dependencies_retry_failure_and_reuse(ray_runtime, data_flags, data_paths, tmp_path,
                                                           monkeypatch, capsys, failpoints):
    """`cxrsweep run all` on two Table I cells and three transfer methods at 0 % labels. M_A
    fails once (retried from its checkpoint); the FCN cell fails always (the command exits 1)."""
    from commands.main import main

    # A relative --out, as the README's demo command gives: trials run in Tune's trial folders,
    # so it must be resolved on the driver.
    monkeypatch.chdir(tmp_path.parent)
    command = ["run", "all", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet,fcn",
               "--tasks", "lungs", "--folds", "0", "--repetitions", "0", "--methods", "proposed,finetune,source_only",
               "--fractions", "0", "--out", tmp_path.name, "--retries", "1", "--progress-every", "2",
               "--checkpoint-every-s", "0", *data_flags]  # a checkpoint every epoch: the retry resumes from epoch 1
    base = make_config("smoke", ["num_threads=1", "checkpoint_every_s=0"])  # as the command line sets them
    grid = build_grid("all", base, models=["unet", "fcn"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["proposed", "finetune", "source_only"], fractions=[0])
    m_a = next(t for t in grid.trials.values() if t.config.experiment == "segmentation" and t.config.model == "unet")
    broken = next(t for t in grid.trials.values() if t.config.model == "fcn")
    warmup = next(t for t in grid.trials.values() if not t.has_row)
    failpoints.fail(m_a.trial_id, times=1, at_epoch=1)
    failpoints.fail(broken.trial_id, times=-1, at_epoch=1)
    assert main(command) == 1
    printed = capsys.readouterr().out
    assert f"FAILED {broken.trial_id}: InjectedFailure: injected failure 2 of always" in printed
    assert "running" in printed and "pending" in printed and "ETA" in printed
    # Ray's per-checkpoint chatter and Tune's own tables are off the console, kept in OUT/logs/ray.log.
    ray_log = tmp_path / "logs" / "ray.log"
    assert f"Ray's own messages (checkpoints, experiment state): {ray_log}" in printed
    assert "Checkpoint successfully created" not in printed and "Configuration for experiment" not in printed
    assert "Checkpoint successfully created at" in ray_log.read_text()

    trials, images = read_trials(tmp_path), read_images(tmp_path)
    rows = {(r.experiment, r.model, r.method): r for r in trials.itertuples()}
    assert sorted(rows) == [("segmentation", "fcn", "supervised"), ("segmentation", "unet", "supervised"),
                            ("transfer", "unet", "finetune"), ("transfer", "unet", "proposed"),
                            ("transfer", "unet", "source_only")]
    failed = rows["segmentation", "fcn", "supervised"]
    assert failed.status == "failed" and "InjectedFailure" in failed.error and pd.isna(failed.test_jaccard_mean)
    # The engines' own lines (epochs, the selection's decision) are in the trials' log file; the
    # console's line for the proposed trial says whether it kept no adaptation.
    logged = ray_log.read_text()
    assert "unet lungs fold 0 epoch 1/" in logged and "proposed lungs 0% epoch 1/" in logged
    proposed = rows["transfer", "unet", "proposed"]
    done = next(line for line in printed.splitlines() if line.startswith(f"[sweep] done {proposed.trial_id}"))
    assert ("kept no adaptation" in done) == (proposed.selected_model == "no_adaptation"), done
    not_applicable = rows["transfer", "unet", "finetune"]
    assert not_applicable.status == "not_applicable" and "0 %" in not_applicable.error
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
    summary = json.loads((tmp_path / "runs" / m_a.trial_id / "result.json").read_text())
    assert summary["epochs_trained"] == 1
    markers = sorted(p.name for p in (tmp_path / "ray" / "injected-failures").iterdir())
    assert markers == sorted([f"{m_a.trial_id}.1", f"{broken.trial_id}.1", f"{broken.trial_id}.2"])
    # Dependencies finished before any transfer trial started.
    warmup_info = json.loads((tmp_path / "translators" / warmup.trial_id / "trial.json").read_text())
    dependencies_done = max(rows["segmentation", "unet", "supervised"].finished_at, warmup_info["finished_at"])
    assert ok[ok.experiment == "transfer"].started_at.min() >= dependencies_done

    # A rerun reuses every finished trial and retries only the failed one: no row is
    # duplicated or lost, and the repaired trial's row replaces its failure. The rerun also asks
    # for the Fig. 9 runs (heart, clavicles): they reuse the lungs warm-up, add their Table I
    # M_A rows and no transfer row.
    failpoints.clear()
    fig9 = build_grid("all", base, models=["unet"], tasks=["heart", "clavicles"],
                      folds=[0], repetitions=[0], methods=["proposed"], fractions=[0])
    wider = Grid(dict(grid.trials))
    for spec in fig9.trials.values():
        wider.add(spec)
    qualitative = [t for t in wider.trials.values() if t.kind == QUALITATIVE]
    added_m_a = [t.trial_id for t in fig9.trials.values() if t.has_row]
    assert len(qualitative) == 2 and len(added_m_a) == 2 and len(wider.trials) == len(grid.trials) + 4
    lines: list[str] = []
    again = run_grid(wider, data_paths, _options(tmp_path), say=lines.append)
    assert sorted(again.completed) == sorted([broken.trial_id, *added_m_a, *(t.trial_id for t in qualitative)])
    assert again.ok and warmup.trial_id in again.reused
    assert len(again.reused) == len(grid.runnable()) - 1
    assert any("2 qualitative" in line for line in lines)
    assert any(f"/{len(wider.runnable())} settled" in line for line in lines)  # progress counts them
    rerun = read_trials(tmp_path)
    assert len(rerun) == len(trials) + 2 and (rerun.status != "failed").all()
    assert sorted(rerun[~rerun.trial_id.isin(trials.trial_id)].trial_id) == sorted(added_m_a)
    unchanged = rerun.trial_id.isin(trials.trial_id) & (rerun.trial_id != broken.trial_id)
    kept = trials[trials.trial_id != broken.trial_id].reset_index(drop=True)
    assert rerun[unchanged].reset_index(drop=True).equals(kept)
    n_test = rerun.set_index("trial_id").n_test_images
    assert len(read_images(tmp_path)) == len(images) + sum(n_test[t] for t in [broken.trial_id, *added_m_a])
    for spec in qualitative:  # kept for the report's Fig. 9: overlays, translations, labelled result.json
        run_dir = tmp_path / "runs" / spec.trial_id
        summary = json.loads((run_dir / "result.json").read_text())
        assert summary["n_test_images"] == 0 and summary["config"]["task"] == spec.config.task
        assert list((run_dir / "overlays").glob("*.png")) and list((run_dir / "translations").glob("*.png"))
    from analysis.overlays import find_saved_images

    shown = {i.run["task"] for i in find_saved_images(tmp_path, rerun) if i.kind == "overlays" and i.is_transfer}
    assert shown == {"lungs", "heart", "clavicles"}


def test_four_trials_share_one_logical_gpu(ray_runtime, data_paths, tmp_path, monkeypatch):
    # Without Tune's automatic loggers: the TensorBoard files below come from the runner's own callback.
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    grid = _grid([0, 1, 2, 3], seed=7, epochs=5)
    outcome = run_grid(grid, data_paths, _options(tmp_path, gpus_per_trial=0.25), say=lambda line: None)
    assert outcome.ok
    infos = [json.loads((tmp_path / "runs" / t / "trial.json").read_text()) for t in grid.trials]
    assert all(info["gpu_ids"] and info["gpu_ids"] == infos[0]["gpu_ids"] for info in infos)
    trials = read_trials(tmp_path)
    # Every trial started before any trial finished: all four ran at the same time.
    assert trials.started_at.max() < trials.finished_at.min(), trials[["trial_id", "started_at", "finished_at"]]
    # TensorBoard curves (Tune's TBXLoggerCallback): each trial's per-epoch metrics, one point per
    # epoch, in its Tune trial folder under OUT/ray (what `tensorboard --logdir OUT/ray` shows).
    for trial_id in grid.trials:
        events = list((tmp_path / "ray").glob(f"sweep-*/{trial_id}/events.out.tfevents.*"))
        assert events, f"no TensorBoard event file for {trial_id}"
        scalars = _tensorboard_scalars(events)
        assert sorted(scalars["ray/tune/train_loss"]) == [1, 2, 3, 4, 5], sorted(scalars)
        assert "ray/tune/val_jaccard" in scalars


def test_resources_fall_back_to_cpu_only_when_no_gpu_can_appear():
    from sweep.resources import plan_resources

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


def test_tune_per_fold_and_run_refuses_a_trial_configured_with_its_own_test_images(
        ray_runtime, data_flags, sweep_phantoms, tmp_path, monkeypatch, capsys):
    """`cxrsweep tune --folds 0,1` (real Optuna + ASHA on Ray) writes one entry per fold, scored
    on that fold's second-validation fold; its trials predict no test image. `run --config`
    gives each fold its own entry, and refuses, before Ray or any training, a fold the record
    does not hold or a trial whose test images the tuning used (`tune --fold 0`, then `--folds 1`)."""
    import sweep.resources
    from commands.main import main
    from data_io.splits import cv_split
    from protocol.tuned import TuningRecord, read_record

    common = ["--profile", "smoke", "--set", "num_threads=1", *data_flags, "--progress-every", "2"]
    tune_out = tmp_path / "tune"
    # One sample at a time: the second reuses the first's worker process (reuse_actors).
    assert main(["tune", "--folds", "0,1", "--trials", "2", "--max-concurrent", "1", "--out", str(tune_out),
                 *common]) == 0
    record = read_record(tune_out / "best-config.json")
    assert [e.scope["fold"] for e in record.entries] == [0, 1]
    from data_io.cache import load_jsrt

    jsrt = load_jsrt(sweep_phantoms["jsrt"], sweep_phantoms["scr"], 64, cache_dir=sweep_phantoms["cache_dir"])
    for entry in record.entries:
        split = cv_split(len(jsrt.ids), entry.scope["fold"])
        assert set(entry.values) == {"lr", "weight_decay", "batch_size"} and entry.trials == 2
        assert entry.scored == {"jsrt": [jsrt.ids[i] for i in split.val]}
        assert entry.trained == {"jsrt": [jsrt.ids[i] for i in split.train]}
        assert entry.data == {"jsrt": jsrt.fingerprint} and entry.score["metric"] == "val_jaccard"
        # Tuning trials put the validation split where the test split goes: no test image predicted.
        fold_ids = {jsrt.ids[i] for i in split.test}
        for images in (tune_out / "tune" / "runs").glob(f"*fold{entry.scope['fold']}*/images.parquet"):
            predicted = set(pd.read_parquet(images).image_id)
            assert predicted == set(entry.scored["jsrt"]) and not predicted & fold_ids
        published = [json.loads(p.read_text())["val_jaccard"]
                     for p in (tune_out / "tune" / "runs").glob(f"*fold{entry.scope['fold']}*/result.json")]
        assert any(entry.score["value"] == pytest.approx(v) for v in published)
    assert not (tune_out / "results").exists()  # tuning trials never enter the result tables
    # Each tuning trial's curves (TBXLoggerCallback) in its folder under OUT/ray/tune-<cell>-<time>/.
    for entry in record.entries:
        events = list((tune_out / "ray").glob(f"tune-*fold{entry.scope['fold']}*/*/events.out.tfevents.*"))
        folders = {path.parent for path in events}
        assert len(folders) == entry.trials, events
        assert all(1 in _tensorboard_scalars(folder.glob("events.out.tfevents.*"))["ray/tune/train_loss"]
                   for folder in folders)

    run_out = tmp_path / "run"
    run = ["run", "segmentation", "--models", "unet", "--tasks", "lungs", "--out", str(run_out),
           "--config", str(tune_out / "best-config.json"), *common]
    assert main([*run, "--folds", "0,1"]) == 0
    trials = read_trials(run_out).set_index("fold")
    for entry in record.entries:
        assert trials.loc[entry.scope["fold"], "cfg_lr"] == pytest.approx(entry.values["lr"])
    capsys.readouterr()

    def no_ray(options):
        raise AssertionError("Ray must not start for a refused config")

    monkeypatch.setattr(sweep.resources, "connect", no_ray)
    assert main([*run, "--folds", "2"]) == 2
    assert "fold 2 has no tuned config" in capsys.readouterr().err

    # A record of fold 0 alone, as `tune --fold 0` writes it (fold 0's entry, the same provenance):
    # its config cannot serve fold 1, whose test images fold 0's tuning trained on.
    single = tmp_path / "tune-fold0"
    TuningRecord(str(single / "best-config.json"), record.entries[:1]).write(single / "best-config.json")
    capsys.readouterr()
    refused_out = tmp_path / "refused"
    assert main(["run", "segmentation", "--models", "unet", "--tasks", "lungs", "--folds", "1", "--out",
                 str(refused_out), "--config", str(single / "best-config.json"), *common]) == 2
    err = capsys.readouterr().err
    fold1 = [jsrt.ids[i] for i in cv_split(len(jsrt.ids), 1).test]
    assert "segmentation-unet-lungs-fold1-" in err and "used to tune the config of fold 0" in err
    assert f"{len(fold1)} of its {len(fold1)} jsrt test images" in err and all(i in err for i in fold1)
    assert not refused_out.exists()


def test_no_stage_barrier_and_bounded_checkpoints(ray_runtime, data_flags, tmp_path):
    """`cxrsweep run all --max-concurrent 2`: a transfer trial starts as soon as its own
    dependencies are published, before the Table I trials it does not need have ended; and at
    the default checkpoint interval each trial writes one Tune checkpoint, holding only last.pt."""
    from commands.main import main

    selection = dict(models=["unet", "fcn"], tasks=["lungs"], folds=[0, 1], repetitions=[0],
                     methods=["proposed", "source_only"], fractions=[0])
    command = ["run", "all", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet,fcn", "--tasks", "lungs",
               "--folds", "0,1", "--repetitions", "0", "--methods", "proposed,source_only", "--fractions", "0",
               "--max-concurrent", "2", "--out", str(tmp_path), "--progress-every", "5", *data_flags]
    assert main(command) == 0
    grid = build_grid("all", make_config("smoke", ["num_threads=1"]), **selection)
    trials = read_trials(tmp_path).set_index("trial_id")
    assert (trials.status == "ok").all() and len(trials) == 6
    warmup = next(t for t in grid.trials.values() if not t.has_row)
    finished_at = dict(trials.finished_at)
    finished_at[warmup.trial_id] = json.loads(
        (tmp_path / "translators" / warmup.trial_id / "trial.json").read_text())["finished_at"]
    table1 = trials[trials.experiment == "segmentation"]
    early = []
    for trial_id, row in trials[trials.experiment == "transfer"].iterrows():
        needs = grid.trials[trial_id].depends_on
        assert row.started_at >= max(finished_at[d] for d in needs)  # its own dependencies first
        unrelated = table1[~table1.index.isin(needs)]
        if row.started_at < unrelated.finished_at.max():
            early.append(trial_id)
    assert early, trials[["started_at", "finished_at"]]

    # Checkpoints: one per trial (the end; a smoke trial lasts seconds), holding last.pt only.
    trained = trials[trials.method != "source_only"]  # source_only trains nothing: no checkpoint
    assert (trained.checkpoint_count == 1).all() and (trained.checkpoint_s > 0).all()
    for trial_id, row in trained.iterrows():
        trial_dir = next((tmp_path / "ray").glob(f"sweep-*/{trial_id}"))
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert sum(1 for r in reports if r.get("checkpoint_dir_name")) == 1
        (kept,) = trial_dir.glob("checkpoint_*")
        assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-stats.json", "last.pt"]
        assert (kept / "last.pt").stat().st_size == row.checkpoint_bytes
    assert trials.loc[trials.method == "source_only", "checkpoint_count"].eq(0).all()


def test_a_failed_dependency_fails_its_dependants_without_running_them(ray_runtime, data_paths, tmp_path,
                                                                       failpoints):
    base = make_config("smoke", ["num_threads=1"])
    grid = build_grid("all", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["source_only", "proposed"], fractions=[0])
    m_a = next(t for t in grid.trials.values() if t.config.experiment == "segmentation")
    failpoints.fail(m_a.trial_id, times=-1, at_epoch=1)
    lines: list[str] = []
    outcome = run_grid(grid, data_paths, _options(tmp_path, retries=0), say=lines.append)
    dependants = [t.trial_id for t in grid.runnable() if m_a.trial_id in t.depends_on]
    assert len(dependants) == 2 and set(outcome.failed) == {m_a.trial_id, *dependants}
    for trial_id in dependants:
        assert outcome.failed[trial_id].startswith(f"dependency {m_a.trial_id} failed: InjectedFailure")
        assert any(line == f"[sweep] not running {trial_id}: its dependency {m_a.trial_id} failed" for line in lines)
        assert not list((tmp_path / "ray").glob(f"sweep-*/{trial_id}"))  # never a Tune trial
    trials = read_trials(tmp_path).set_index("trial_id")
    assert (trials.loc[dependants, "status"] == "failed").all()
    assert trials.loc[dependants, "test_jaccard_mean"].isna().all()
    warmup = next(t for t in grid.trials.values() if not t.has_row)
    assert warmup.trial_id in outcome.completed  # what does not need M_A still ran
