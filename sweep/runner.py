"""Runs a grid on Ray Tune: one Tuner for all its trials, data loaded once on the driver,
fractional GPUs, retries, live progress, resume, and the result tables rebuilt at the end.

There is no stage barrier: the Tuner's searcher (sweep.scheduling.DependencyRelease) releases a
trial as soon as its own dependencies are published, so no trial holds a GPU while it waits for
one, and no trial waits for unrelated ones. A trial whose outputs are already in OUT is reused,
not rerun; a trial whose dependency failed is recorded as failed without running.

Every trial's per-epoch reports also land as TensorBoard event files in its Tune trial folder,
OUT/ray/sweep-<time>-<random>/<trial id>/ (`tensorboard --logdir OUT/ray`).
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.logger import TBXLoggerCallback

from protocol.collect import CurrentData, write_results
from protocol.durations import format_duration
from protocol.grid import QUALITATIVE, Grid, TrialSpec, spec_to_dict
from protocol.store import RunStore
from sweep import resources, retries
from sweep.driver_lock import DriverLock
from sweep.failpoints import FAILPOINTS
from sweep.fused_trials import run_trial_or_group
from sweep.inputs import DataPaths, data_identity, data_settings, load_trial_datasets
from sweep.options import SweepOptions, fuse_count
from sweep.progress import (
    ProgressRelay,
    SweepProgress,
    ray_log_path,
    report_progress_to,
    send_ray_messages_to,
)
from sweep.scheduling import DependencyRelease
from sweep.trainables import error_summary

STATE_FILE = "sweep-state.json"
STATE_KEY = "experiment"  # in STATE_FILE: the name of the sweep's Tune experiment under OUT/ray


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # trial_id -> error
    not_applicable: list[str] = field(default_factory=list)
    trial_rows: int = 0
    image_rows: int = 0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------------------------
# Running the trials.


def experiment_name() -> str:
    """A new Tune experiment's name: when it started, and a random part. Trials keep their scratch
    run directories under it (sweep.trainables.SCRATCH), so two sweeps of the same trial started
    in the same second on one machine would otherwise share, and resume from, each other's."""
    return f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class _Runner:
    def __init__(self, grid: Grid, datasets: dict[str, Any], current: CurrentData | None, options: SweepOptions,
                 say=print):
        self.grid, self.options, self.say = grid, options, say
        self.store = RunStore(options.out)
        self.datasets, self.current = datasets, current
        self.resources: dict[str, float] | None = None
        self.outcome = SweepOutcome()
        self.started = time.time()
        self.failpoints = FAILPOINTS.trial_entries(list(grid.trials.values()))
        profiles = {s.config.profile for s in grid.runnable()}
        self.profile = profiles.pop() if len(profiles) == 1 else "paper"
        self.fuse = fuse_count(options.fuse, self.profile)
        if self.fuse < 1:
            raise ValueError(f"--fuse must be at least 1, got {self.fuse}")

    def run(self) -> SweepOutcome:
        for spec in self.grid.not_applicable():
            self.store.record_not_applicable(spec)
            self.outcome.not_applicable.append(spec.trial_id)
        todo, published = [], set()
        for spec in self.grid.runnable():
            if self.store.is_complete(spec) or self.store.is_not_applicable(spec):
                self.outcome.reused.append(spec.trial_id)
                published.add(spec.trial_id)
                continue
            if self.store.holds_other_data(spec):
                self.say(f"[sweep] {spec.trial_id}: OUT holds it finished on other data; it runs again on this data")
            todo.append(spec)
        self.progress = SweepProgress(total=len(self.grid.runnable()), say=self.say,
                                      every_s=self.options.progress_every_s)
        self.progress.begin({s.trial_id for s in todo}, reused=len(self.outcome.reused))
        if todo:
            try:
                self._run(todo, published, resume=self.options.resume)
            finally:
                report_progress_to(None)
        self._gather()
        self.outcome.wall_s = time.time() - self.started
        return self.outcome

    def _trainable(self):
        """The trainable with its resources (settled on first use: a sweep whose trials are all
        finished asks the cluster for nothing)."""
        if self.resources is None:
            self.resources = resources.trial_resources(self.options, self.profile, self.say)
        return tune.with_resources(tune.with_parameters(run_trial_or_group, datasets=self.datasets), self.resources)

    def _entry(self, spec: TrialSpec) -> dict[str, Any]:
        """What the trainable gets for `spec` (see sweep.trainables.run_trial)."""
        entry: dict[str, Any] = {"spec": spec_to_dict(spec),
                                 "dependencies": [spec_to_dict(self.grid.trials[d]) for d in spec.depends_on]}
        entry.update(self.failpoints.get(spec.trial_id, {}))
        return entry

    def _run(self, specs: list[TrialSpec], published: set[str], resume: bool) -> None:
        for spec in specs:
            self.store.prepare_rerun(spec)
        trainable = self._trainable()
        report_progress_to(self.progress)
        state_path = self.store.path("ray", STATE_FILE)
        state = self.store.read_json(state_path) if self.store.exists(state_path) else {}
        tuner = None
        data = self.current.fingerprints if self.current else {}
        if resume and STATE_KEY in state and state.get("data", {}) != data:
            # Its checkpoints were trained on other data: continuing them would mix two datasets.
            self.say(f"[sweep] the interrupted sweep ran on other data ({state.get('data') or 'not recorded'}; "
                     f"now {data}); its trials start afresh")
            state = {}
        if resume and STATE_KEY in state:
            experiment = self.store.uri("ray", state[STATE_KEY])
            if tune.Tuner.can_restore(experiment):
                self.say(f"[sweep] resuming Ray Tune experiment {experiment}")
                # The experiment brings back its searcher (with the trials it had released) and
                # its ProgressRelay, which reports to this driver's progress.
                tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
        restored = tuner is not None
        if not restored:
            name = experiment_name()
            state = {STATE_KEY: name, "data": data}
            self.store.write_json(state_path, state)
            searcher = DependencyRelease(specs, {s.trial_id: self._entry(s) for s in specs}, self.store.location,
                                         finished=published, fuse=self.fuse)
            tuner = tune.Tuner(
                trainable,
                param_space={"out": self.store.location, "cpus": self.options.cpus_per_trial},
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=len(specs),
                    max_concurrent_trials=self.options.max_concurrent or None,
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                    # Trials share resources, so one worker process runs trial after trial:
                    # no interpreter and torch start-up per trial.
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=name, storage_path=self.store.uri("ray"),
                    # A trial's own error and the loss of its worker (a reclaimed spot node) have
                    # separate retry budgets: sweep.retries.
                    failure_config=retries.failure_config(self.options.retries),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    # TensorBoard curves of every trial's per-epoch metrics (tensorboard --logdir OUT/ray).
                    callbacks=[ProgressRelay(), TBXLoggerCallback(), *retries.callbacks(self.options.retries)],
                    verbose=0,
                ),
            )
        with _pending_trials(self._slots()), _tune_output_off():
            results = tuner.fit()
        self._collect(results, specs)
        left = self._record_unrun(specs, restored)
        leftover = [s for s in specs if s.trial_id in left]
        if leftover and restored:
            # The restored experiment did not hold every trial asked for now (the plan grew).
            self.progress.begin({s.trial_id for s in leftover})
            done = {s.trial_id for s in self.grid.runnable() if self.store.is_complete(s)}
            self._run(leftover, done, resume=False)

    def _slots(self) -> int:
        """How many trials Tune may keep pending (their actors starting at once). Tune allows a
        custom searcher one, which would start a GPU's trials one after another; more than
        the trials the cluster can run at once would fix the order of later trials early (the
        searcher picks the best ready trial when asked). An autoscaler sizes the cluster from
        pending demand, so there a few GPU nodes' worth."""
        if resources.autoscaler_gpu_node_types():
            return 16
        total = ray.cluster_resources()
        fits = [total.get("CPU", 0) / self.resources["cpu"]]
        if self.resources.get("gpu"):
            fits.append(total.get("GPU", 0) / self.resources["gpu"])
        return max(1, int(min(fits) + 1e-9))

    def _collect(self, results, specs: list[TrialSpec]) -> None:
        by_id = {s.trial_id: s for s in specs}
        for result, config in _with_configs(results):
            entries = config.get("members") or [config["trial"]]
            for entry in entries:
                trial_id = entry["spec"]["trial_id"]
                spec = by_id.get(trial_id)
                if spec is None:
                    continue  # a restored experiment may hold trials no longer asked for
                if self.store.is_complete(spec):
                    # A member published before its group failed (or any trial that did) counts as done.
                    self.outcome.completed.append(trial_id)
                    continue
                if self.store.is_not_applicable(spec):
                    # The engine's verdict, recorded before any training: final, even when the
                    # fused group it was recorded in failed afterwards.
                    self.outcome.not_applicable.append(trial_id)
                    continue
                if result.error is not None:
                    error = retries.describe_lost_worker(result.error) or error_summary(result.error)
                else:
                    # A member that failed in its fused group recorded its own error.
                    error = self.store.failure_of(spec) or "the trial ended without publishing its outputs"
                self.outcome.failed[trial_id] = error
                self.store.record_failure(spec, error)

    def _record_unrun(self, specs: list[TrialSpec], restored: bool) -> set[str]:
        """Trials the searcher never released: those whose dependency failed are recorded as
        failed with its error; any other is a trial the sweep stopped before (restored: left
        for the next Tuner, and returned)."""
        ran = set(self.outcome.completed) | set(self.outcome.failed) | set(self.outcome.not_applicable)
        unrun = {s.trial_id for s in specs if s.trial_id not in ran and not self.store.is_complete(s)}
        left: set[str] = set()
        for layer in self.grid.stages():  # dependencies before their dependants
            for spec in layer:
                if spec.trial_id not in unrun:
                    continue
                broken = [d for d in spec.depends_on if d in self.outcome.failed]
                if broken:
                    error = f"dependency {broken[0]} failed: {self.outcome.failed[broken[0]]}"
                elif restored:
                    left.add(spec.trial_id)
                    continue
                else:
                    error = "not started: the sweep stopped before its dependencies were published"
                self.store.record_failure(spec, error)
                self.outcome.failed[spec.trial_id] = error
        return left

    def _gather(self) -> None:
        self.outcome.trial_rows, self.outcome.image_rows = write_results(self.store, self.current)


def _with_configs(results) -> list[tuple[Any, dict]]:
    """Each Tune result with its trial's config. `Result.config` is read from the trial's last
    report (or the defaults its worker filled in): a trial whose worker was lost before it got
    that far (a node reclaimed while the trial started) has none, so it comes from the trial
    itself (the results are built from the experiment's trials, in their order)."""
    trials = results._experiment_analysis.trials
    return [(result, result.config or trial.config) for result, trial in zip(results, trials, strict=True)]


@contextlib.contextmanager
def _tune_output_off():
    """Tune's reporter prints its experiment table, result folder and TensorBoard hint even at
    verbose=0; its legacy reporter (RAY_AIR_NEW_OUTPUT=0), at verbose=0, prints nothing."""
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


@contextlib.contextmanager
def _pending_trials(count: int):
    """TUNE_MAX_PENDING_TRIALS_PG for one Tuner.fit, unless the user has set it."""
    key = "TUNE_MAX_PENDING_TRIALS_PG"
    if key in os.environ:
        yield
        return
    os.environ[key] = str(count)
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _trial_name(trial) -> str:
    """A trial's id; a fused group's: its first member's, with how many others it holds."""
    name = trial.config["trial"]["spec"]["trial_id"]
    members = trial.config.get("members") or ()
    return f"fused-{name}+{len(members) - 1}" if len(members) > 1 else name


def quiet_ray_console(store: RunStore, say=print) -> None:
    """The console of a sweep shows its progress lines, one line per finished or failed trial and
    the summary; Ray's own messages go to a log file under OUT (the trials' too: see run_trial).
    Tune's own progress output is off while the sweep's Tuner runs (`_tune_output_off`)."""
    path = ray_log_path(store)
    send_ray_messages_to(path)
    say(f"[sweep] Ray's own messages (checkpoints, experiment state): {path}"
        + ("" if store.is_local else " on each node"))


def run_grid(grid: Grid, paths: DataPaths, options: SweepOptions, say=print,
             datasets: dict[str, Any] | None = None) -> SweepOutcome:
    """Run every trial of `grid` that OUT does not already hold on the same data; write the
    result tables. The data is read (`datasets`, or from `paths`) before Ray starts: its
    fingerprints are part of every trial's identity. Refused (`OutInUse`) while another driver
    runs on the same OUT (sweep.driver_lock)."""
    with DriverLock(options.out):
        return _run_grid(grid, paths, options, say, datasets)


def _run_grid(grid: Grid, paths: DataPaths, options: SweepOptions, say, datasets: dict[str, Any] | None
              ) -> SweepOutcome:
    # Experiment state saved every 2 s, so a killed driver loses almost nothing. (At 0, every
    # step, Tune's background sync races its own state writes and logs spurious errors.)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # That frequent saving is deliberate; Tune would warn about it on every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    image_size, _ = data_settings(grid.runnable())
    current = None
    if grid.runnable():
        if datasets is None:
            datasets = load_trial_datasets(grid.runnable(), paths)
        current = data_identity(datasets, image_size)
        grid = grid.with_data(current.fingerprints)
    resources.connect(options)
    runner = _Runner(grid, datasets or {}, current, options, say)
    quiet_ray_console(runner.store, say)
    qualitative = sum(1 for s in grid.runnable() if s.kind == QUALITATIVE)
    say(f"[sweep] {len(grid.runnable())} trials to run or reuse"
        + (f" ({qualitative} qualitative Fig. 9 runs, no table rows)" if qualitative else "")
        + f", {len(grid.not_applicable())} not applicable; output {runner.store.uri()}")
    outcome = runner.run()
    say(f"[sweep] finished in {format_duration(outcome.wall_s)}: {len(outcome.completed)} completed, "
        f"{len(outcome.reused)} reused, {len(outcome.failed)} failed, {len(outcome.not_applicable)} not applicable; "
        f"{outcome.trial_rows} trial rows, {outcome.image_rows} image rows in {runner.store.uri('results')}")
    for trial_id, error in sorted(outcome.failed.items()):
        say(f"[sweep] FAILED {trial_id}: {error}")
    return outcome

