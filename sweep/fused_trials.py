"""The Ray Tune trainable of a fused trial (`cxrsweep run --fuse K`): up to K grid trials trained
as one computation on one device by `engine.fused.supervised.train_fused`.

Each member is still a trial of its own everywhere but in Tune: its own run directory (under
the group's scratch folder), `result.json`, `images.parquet` rows, checkpoint, publication to
OUT and failure record. The group reports to Tune once per fused epoch (each member's numbers
under its trial id); when any member has just written its `last.pt`, the report's Tune
checkpoint holds every member's checkpoints/ folder (hard links, no copy), one sub-folder per
trial id. A retried or resumed group restores each member from its own sub-folder; members
already published are not trained again. A member that raises or diverges is recorded failed
in OUT and leaves the group; the others go on. A failure of the whole group (a lost worker) is
retried by Tune like any trial, every member from its own checkpoint.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from protocol.grid import SEGMENTATION, TRANSFER, spec_from_dict
from protocol.store import RunStore
from sweep import failpoints
from sweep.progress import ENGINE_LOGGERS, RAY_LOGGERS, ray_log_path, send_ray_messages_to
from sweep.trainables import (
    SCRATCH,
    CheckpointStats,
    checkpoint_folder,
    numeric,
    run_trial,
    transfer_inputs,
    trial_config,
    trial_notes,
    trial_record,
)

log = logging.getLogger(__name__)

STAGED = "tune-checkpoint"  # in the group's folder: the hard-linked checkpoint handed to Tune


class _MemberRecorder:
    """A member's EpochCallback: its last metrics, and whether it has just written last.pt."""

    def __init__(self, stats: CheckpointStats):
        self.stats = stats
        self.metrics: dict[str, float] = {}
        self.wrote = False

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        self.metrics = numeric(metrics)
        self.wrote = self.stats.note(metrics, run_dir) or self.wrote


def _restore_group(group_dir: Path, trial_ids: list[str]) -> set[str]:
    """Make each member's run directory hold exactly its part of the group's last Tune
    checkpoint (or nothing); returns the members that had one."""
    if group_dir.exists():
        shutil.rmtree(group_dir)
    for trial_id in trial_ids:
        (group_dir / trial_id).mkdir(parents=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return set()
    restored = set()
    with checkpoint.as_directory() as saved:
        for trial_id in trial_ids:
            part = Path(saved) / trial_id
            if part.is_dir():
                shutil.copytree(part, checkpoint_folder(group_dir / trial_id), dirs_exist_ok=True)
                restored.add(trial_id)
    return restored


def _stage(group_dir: Path, run_dirs: dict[str, Path]) -> Path:
    """A folder of hard links to every member's checkpoints/ files: what Tune persists."""
    staged = group_dir / STAGED
    if staged.exists():
        shutil.rmtree(staged)
    for trial_id, run_dir in run_dirs.items():
        folder = checkpoint_folder(run_dir)
        if not folder.is_dir():
            continue
        (staged / trial_id).mkdir(parents=True)
        for path in folder.iterdir():
            if path.is_file():
                os.link(path, staged / trial_id / path.name)
    return staged


def _member(spec, cfg, entry: dict, config: dict, datasets: dict[str, Any], run_dir: Path, callbacks: list, view):
    """The engine's Member for one trial of the group: a supervised segmentation trial, a
    finetune / scratch / self-training trial, or a proposed-method trial (its inputs:
    sweep.trainables.transfer_inputs). A transfer cell the engine finds not applicable raises
    NotApplicable here, before training."""
    from engine.fused.supervised import Member

    if spec.kind == SEGMENTATION:
        from engine.data.segmentation import segmentation_data

        return Member(cfg, view(segmentation_data(cfg, datasets["jsrt"])), run_dir, callbacks)
    from engine.transfer.dispatch import check_applicable, proposed_run, transfer_trainer

    data, segmenter, translator = transfer_inputs(cfg, datasets, config, entry, view)
    check_applicable(cfg, data)
    if cfg.method == "proposed":
        from engine.fused.proposed import FusedProposedStep

        return Member(cfg, None, run_dir, callbacks, step=FusedProposedStep,
                      trainer=lambda: proposed_run(cfg, data, run_dir, segmenter, translator))
    return Member(cfg, None, run_dir, callbacks,
                  trainer=lambda: transfer_trainer(cfg, data, run_dir, segmenter))


class _Group:
    """A fused trial's members on this worker: how each starts, what the group reports to Tune
    after each fused epoch, and how each member's outcome lands in OUT."""

    def __init__(self, config: dict, store: RunStore, group_dir: Path):
        self.config, self.store, self.group_dir = config, store, group_dir
        self.entries = {spec_from_dict(e["spec"]).trial_id: e for e in config["members"]}
        self.specs = {trial_id: spec_from_dict(e["spec"]) for trial_id, e in self.entries.items()}
        self.members: list = []
        self.order: list[str] = []  # the trial id of each member, in train_fused's order
        self.recorders: dict[str, _MemberRecorder] = {}
        self.holds: dict[str, list] = {}
        self.stats: dict[str, CheckpointStats] = {}
        self.failed_at_start: dict[str, BaseException] = {}
        self.not_applicable: list[str] = []

    def start(self, datasets: dict[str, Any], restored: set[str], view) -> None:
        """Every member not yet published in OUT as an engine Member; a member the engine finds
        not applicable is recorded so, one that cannot start is kept to be recorded failed."""
        from engine.transfer.dispatch import NotApplicable

        node_id = ray.get_runtime_context().get_node_id()
        for trial_id, spec in self.specs.items():
            if self.store.is_complete(spec):
                print(f"[trial {trial_id}] already published in OUT; nothing to do", flush=True)
                continue
            cfg = trial_config(spec, self.config, datasets)
            run_dir = self.group_dir / trial_id
            self.stats[trial_id] = CheckpointStats.restored(run_dir)
            self.recorders[trial_id] = _MemberRecorder(self.stats[trial_id])
            resumed = trial_id in restored
            entry = self.entries[trial_id]
            hooks = failpoints.failure_callbacks(entry, self.store, trial_id, resumed)
            # A member's hold runs after the group's report (`after_epoch`), as a trial alone holds.
            self.holds[trial_id] = failpoints.hold_callbacks(entry, self.store, trial_id)
            log.info("[trial %s] %s in a fused group of %d on node %s (%s), device %s, %d thread(s)", trial_id,
                     "resuming from its checkpoint" if resumed else "starting", len(self.specs), node_id[:12],
                     socket.gethostname(), cfg.device, cfg.num_threads)
            try:
                self.members.append(_member(spec, cfg, entry, self.config, datasets, run_dir,
                                            [self.recorders[trial_id], *hooks], view))
            except NotApplicable as reason:
                # As a trial alone: the engine knows cells the grid cannot see.
                self.store.record_not_applicable(spec, str(reason))
                self.not_applicable.append(trial_id)
                print(f"[trial {trial_id}] not applicable: {reason}", flush=True)
            except Exception as exc:  # its data or its dependency: this member fails alone
                log.exception("[trial %s] could not start", trial_id)
                self.failed_at_start[trial_id] = exc
        self.order = [Path(m.run_dir).name for m in self.members]

    def after_epoch(self, ended: list[int]) -> None:
        """One Tune report for the members that ended an epoch, with a checkpoint of every member
        when any of them has just written its last.pt."""
        report: dict[str, float] = {"members_training": float(len(ended))}
        recorders = [self.recorders[self.order[i]] for i in ended]
        for i, recorder in zip(ended, recorders):
            report.update({f"{self.order[i]}/{k}": v for k, v in recorder.metrics.items()})
            report["epoch"] = max(report.get("epoch", 0), recorder.metrics.get("epoch", 0))
        checkpoint = None
        if any(recorder.wrote for recorder in recorders):
            # Every member's checkpoint, a member that could not start included (a retry starts
            # it again from its own).
            staged = _stage(self.group_dir, {trial_id: self.group_dir / trial_id
                                             for trial_id in [*self.order, *self.failed_at_start]})
            checkpoint = tune.Checkpoint.from_directory(str(staged))
        report_started = time.perf_counter()
        tune.report(report, checkpoint=checkpoint)
        for recorder in recorders:
            if recorder.wrote:
                recorder.stats.seconds += time.perf_counter() - report_started
                recorder.wrote = False
        for i, recorder in zip(ended, recorders):  # the hold failpoint, after the report (as a trial alone holds)
            for hold in self.holds[self.order[i]]:
                hold(recorder.metrics.get("epoch", 0), recorder.metrics, self.group_dir / self.order[i])

    def publish(self, results: list, engine_s: float, started_at: float) -> dict[str, Any]:
        """Each member's outcome in OUT (published, or recorded failed); the group's final report."""
        final: dict[str, Any] = {"published": 0, **{f"{t}/not_applicable": 1 for t in self.not_applicable}}
        for trial_id, result in [*zip(self.order, results), *self.failed_at_start.items()]:
            spec = self.specs[trial_id]
            if isinstance(result, BaseException):
                error = f"{type(result).__name__}: {result}"
                self.store.record_failure(spec, error)
                final[f"{trial_id}/failed"] = 1
                print(f"[trial {trial_id}] FAILED in its fused group: {error}", flush=True)
                continue
            self.store.publish(spec, self.group_dir / trial_id, trial_record(
                trial_id, self.members[0].cfg.device, engine_s, started_at, self.stats[trial_id],
                fused_with=[t for t in self.specs if t != trial_id]))
            final["published"] += 1
            final[f"{trial_id}/test_jaccard_mean"] = result.test_jaccard_mean
            final[f"{trial_id}/val_jaccard"] = result.val_jaccard
            if spec.kind == TRANSFER:
                final.update({f"{trial_id}/{k}": v for k, v in trial_notes(self.group_dir / trial_id).items()})
        return final


def run_fused_trial(config: dict, datasets: dict[str, Any]) -> None:
    """The members of `config["members"]` (entries as sweep.trainables.run_trial takes them, all
    of one sweep.fusing.group_key: supervised segmentation trials, finetune / scratch trials,
    self-training trials, or proposed-method trials) trained together."""
    from engine.data.transfer import hide_test
    from engine.fused.supervised import train_fused

    started_at = time.time()
    store = RunStore(config["out"])
    send_ray_messages_to(ray_log_path(store), RAY_LOGGERS + ENGINE_LOGGERS)
    group_dir = SCRATCH / "runs" / tune.get_context().get_experiment_name() / tune.get_context().get_trial_name()
    group = _Group(config, store, group_dir)
    restored = _restore_group(group_dir, list(group.specs))
    group.start(datasets, restored, hide_test if config.get("tuning") else (lambda data: data))
    engine_started = time.perf_counter()
    results = train_fused(group.members, group.after_epoch)
    final = group.publish(results, time.perf_counter() - engine_started, started_at)
    shutil.rmtree(group_dir, ignore_errors=True)
    tune.report(final)


def run_trial_or_group(config: dict, datasets: dict[str, Any]) -> None:
    """The sweep's trainable: a fused group (its config holds `members`) or one trial."""
    if config.get("members"):
        run_fused_trial(config, datasets)
    else:
        run_trial(config, datasets)
