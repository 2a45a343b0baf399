"""Live progress of a sweep: one line every few seconds with trials done / running / pending /
failed, elapsed time and an estimate of the time left, plus a line per finished or failed trial
(and per trial left unrun because a dependency failed), then the summary. Ray's own messages
(e.g. "Checkpoint successfully created at: ..." for every Tune checkpoint of every trial) go to
a log file under OUT instead (`ray_log_path`, `send_ray_messages_to`; for `cxrsweep segment`,
`ray_console_to`)."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from protocol.durations import format_duration

# Ray Tune's and Ray Train's loggers: the per-checkpoint and per-experiment chatter of a sweep;
# and the trial wrapper's own (which trial starts or resumes where), at INFO.
RAY_LOGGERS = ("ray.tune", "ray.train", "sweep.trainables", "sweep.fused_trials")
# In a trial worker also the engines' own lines (epochs, D/G balance, selection decisions): the
# console gets one line per trial, which says what a user must know (sweep.trainables.trial_notes).
ENGINE_LOGGERS = ("engine", "data_io")
RAY_LOG = ("logs", "ray.log")


# Flags a trial's last report may carry (sweep.trainables.trial_notes) and what the console says.
TRIAL_NOTES = {
    "fell_back": "kept no adaptation (M_A as it is: its guard refused the result; result.json's selection_rule says "
                 "why)",
    "saturated": "discriminators saturated (look at its translation samples)",
}


def ray_log_path(store) -> Path:
    """Where a process of the sweep writes Ray's messages: OUT/logs/ray.log for a local OUT, else
    the same name under the node's scratch folder (a bucket takes no appends)."""
    if store.is_local:
        return Path(store.path(*RAY_LOG))
    return Path(tempfile.gettempdir()) / "cxrsweep" / Path(*RAY_LOG)


def _drop_exits_raised_in_callbacks(previous):
    """An unraisable-exception hook that drops SystemExit and hands anything else to `previous`.

    Ray stops a sweep's idle workers with SIGTERM, and its handler raises SystemExit wherever the
    worker is. Inside a weakref or finaliser callback Python cannot raise it: the default hook
    prints it as an ignored exception, traceback and all, and the worker's stderr reaches the
    sweep's console after a sweep that succeeded. Ray ends the worker anyway; the print says
    nothing a user must act on. Every other ignored exception is still printed."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook.cxrsweep_drops_exits = True
    return hook


def send_ray_messages_to(path: Path, loggers: tuple[str, ...] = RAY_LOGGERS) -> None:
    """Ray's loggers in this process (driver or trial worker) write to `path` and no longer reach
    the console (a worker's stderr is what Ray forwards to the driver's), except their errors
    while this process logs at debug level (`cxrsweep -v`): a failed trial's traceback, which
    Tune logs on the driver, is then on the console too; nor does the SystemExit of Ray's SIGTERM
    at shutdown (`_drop_exits_raised_in_callbacks`). Idempotent: a worker process runs trial after
    trial. `loggers`: whose messages (and their children's)."""
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in loggers:
        logger = logging.getLogger(name)
        # A process that runs one sweep after another (a notebook, a test session, a reused
        # worker) writes only to the latest sweep's file.
        for old in [h for h in logger.handlers if getattr(h, "cxrsweep_ray_log", False)
                    and h.baseFilename != str(path.resolve())]:
            logger.removeHandler(old)
            old.close()
        if not any(getattr(h, "cxrsweep_ray_log", False) for h in logger.handlers):
            handler = logging.FileHandler(path)
            handler.cxrsweep_ray_log = True
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s pid {os.getpid()} %(name)s: "
                                                   "%(message)s"))
            logger.addHandler(handler)
        for old in [h for h in logger.handlers if getattr(h, "cxrsweep_console_errors", False)]:
            logger.removeHandler(old)
        if verbose:
            console = logging.StreamHandler(sys.stderr)
            console.cxrsweep_console_errors = True
            console.setLevel(logging.ERROR)
            console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            logger.addHandler(console)
        logger.propagate = False
        if not name.startswith("ray."):
            logger.setLevel(logging.INFO)
    if not getattr(sys.unraisablehook, "cxrsweep_drops_exits", False):
        sys.unraisablehook = _drop_exits_raised_in_callbacks(sys.unraisablehook)


@contextlib.contextmanager
def ray_console_to(path: Path):
    """While Ray runs in this process, what reaches its stderr (file descriptor 2) goes to `path`:
    Ray's Python loggers' console handler, the C++ core worker's lines (which no logger holds),
    warnings, tracebacks of Ray's threads. cxrsweep's own log lines (the root logger's console
    handlers) still reach the console, and stdout (prints, `cxrsweep segment`'s progress bar) is
    left alone: Ray writes nothing there. What `cxrsweep segment` uses instead of the loggers-only
    `send_ray_messages_to` of a sweep, whose workers forward their output to the driver's loggers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    console = os.fdopen(saved, "w", buffering=1, closefd=False)
    moved = [h for h in logging.getLogger().handlers
             if type(h) is logging.StreamHandler and _writes_to_fd(h.stream, 2)]
    streams = [h.setStream(console) for h in moved]
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield console
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        for handler, stream in zip(moved, streams):
            handler.setStream(stream)
        console.close()
        os.close(saved)


def _writes_to_fd(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


# Ray Tune's logger that says, in a trial's worker before the trial's own code runs (and so before
# it redirects Ray's loggers), "Restored on <ip> from checkpoint: ..." on --resume. The trial then
# logs where it resumes from itself, in ray.log.
RESTORE_LOGGER = "ray.tune.trainable.trainable"


def worker_runtime_env() -> dict:
    """The runtime_env of a Ray runtime a sweep starts: each worker process raises the restore
    logger to WARNING from its start. The hook is made of the standard library only (a logger
    pickles as its name), so a worker that cannot import cxrsweep yet (its code path not set up
    when the hook runs) still starts."""
    quiet = functools.partial(logging.Logger.setLevel, logging.getLogger(RESTORE_LOGGER), logging.WARNING)
    quiet.__name__ = "cxrsweep_quiet_restore_messages"  # Ray names a callable hook by it
    return {"worker_process_setup_hook": quiet}


class SweepProgress:
    """The progress of one sweep (its Tuner, and any Tuner run after it); Tune's events reach it
    through a `ProgressRelay` (see there)."""

    def __init__(self, total: int, say=print, every_s: float = 10.0):
        self.total, self.say, self.every_s = total, say, every_s
        self.started = time.time()
        self.finished_before = 0  # trials reused from OUT, or done under an earlier Tuner
        self.failed_before = 0  # trials failed under an earlier Tuner
        self.dropped = 0  # trials not run: a dependency failed
        self.to_run: set[str] = set()
        self.last_line = 0.0
        self.settled_here = 0
        self.counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        self._failed_members: dict[str, list[str]] = {}  # fused group -> its members that failed

    def begin(self, to_run: set[str], reused: int = 0) -> None:
        """Count the trials `to_run` (ids) of the next Tuner; `reused` trials are already in OUT."""
        self.to_run |= set(to_run)
        self.finished_before += self.counts["done"] + reused
        self.failed_before += self.counts["failed"]
        self.counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        if reused:
            self.say(f"[sweep] {reused} trial(s) already finished in OUT, reused")

    def dropped_trials(self, trial_ids: list[str], failed_dependency: str) -> None:
        """Trials the scheduler will not run because `failed_dependency` failed."""
        self.dropped += len(trial_ids)
        for trial_id in trial_ids:
            self.say(f"[sweep] not running {trial_id}: its dependency {failed_dependency} failed")

    def line(self) -> str:
        c = self.counts
        failed = self.failed_before + c["failed"] + self.dropped
        settled = self.finished_before + c["done"] + failed
        elapsed = time.time() - self.started
        remaining = self.total - settled
        eta = elapsed / self.settled_here * remaining if self.settled_here else None
        # Not released yet: their dependencies are still running (sweep.scheduling).
        waiting = max(0, remaining - c["running"] - c["pending"])
        return (f"[sweep {format_duration(elapsed)}] {settled}/{self.total} settled | "
                f"done {self.finished_before + c['done']} | running {c['running']} | pending {c['pending']} | "
                f"waiting {waiting} | failed {failed} | elapsed {format_duration(elapsed)} | "
                f"ETA {format_duration(eta) if remaining else '0:00:00'}")

    def _count(self, trials) -> None:
        counts = {"done": 0, "running": 0, "pending": 0, "failed": 0}
        names = {"TERMINATED": "done", "RUNNING": "running", "PENDING": "pending", "ERROR": "failed",
                 "PAUSED": "pending"}
        for trial in trials:
            # A restored experiment also lists trials settled before the interruption.
            members = [m for m in member_ids(trial) if m in self.to_run]
            status = names.get(trial.status, "pending")
            failed = set(self._failed_members.get(str(trial), ()))
            for member in members:
                counts["failed" if member in failed else status] += 1
        self.counts = counts

    def on_step_end(self, iteration, trials, **info):
        self._count(trials)
        now = time.time()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self.say(self.line())

    def on_trial_complete(self, iteration, trials, trial, **info):
        members = member_ids(trial)
        if len(members) > 1:
            self._group_complete(trials, trial, members)
            return
        self.settled_here += 1
        self._count(trials)
        result = trial.last_result or {}
        score = result.get("test_jaccard_mean")
        node = (result.get("node_ip") or "?")
        # A qualitative (Fig. 9) run has no test labels: its score is NaN and not shown.
        shown = isinstance(score, float) and score == score
        notes = [note for flag, note in TRIAL_NOTES.items() if result.get(flag)]
        self.say(f"[sweep] done {trial}" + (f": test Jaccard {score:.4f}" if shown else "")
                 + f" (node {node})" + "".join(f"; {note}" for note in notes))

    def _group_complete(self, trials, trial, members: list[str]) -> None:
        """One line per member of a fused group that ended: its score, or that it failed."""
        result = trial.last_result or {}
        self._failed_members[str(trial)] = [m for m in members if result.get(f"{m}/failed")]
        self.settled_here += len(members)
        self._count(trials)
        for member in members:
            score = result.get(f"{member}/test_jaccard_mean")
            if result.get(f"{member}/failed"):
                self.say(f"[sweep] FAILED {member} (in fused group {trial}); see the summary below")
            elif result.get(f"{member}/not_applicable"):
                self.say(f"[sweep] not applicable {member} (fused group {trial})")
            else:
                notes = "".join(f"; {note}" for flag, note in TRIAL_NOTES.items() if result.get(f"{member}/{flag}"))
                shown = f": test Jaccard {score:.4f}" if isinstance(score, float) else ""
                self.say(f"[sweep] done {member}{shown} (fused group {trial}){notes}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.settled_here += len(member_ids(trial))
        self._count(trials)
        self.say(f"[sweep] FAILED {trial} after {trial.num_failures} attempt(s); see the summary below")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.say(f"[sweep] retrying {trial} from its last checkpoint (failure {trial.num_failures})")

    def on_experiment_end(self, trials, **info):
        self._count(trials)
        self.say(self.line())


def member_ids(trial) -> list[str]:
    """Our trial ids in a Tune trial: one, or a fused group's members."""
    config = getattr(trial, "config", None) or {}
    entries = config.get("members") or ([config["trial"]] if "trial" in config else [])
    return [entry["spec"]["trial_id"] for entry in entries] or [str(trial)]


# The sweep whose progress this driver process reports now (one at a time).
_live: SweepProgress | None = None


def report_progress_to(progress: SweepProgress | None) -> None:
    """Make `progress` the target of every ProgressRelay in this process."""
    global _live
    _live = progress


class ProgressRelay(Callback):
    """The Tune callback of a sweep: it holds nothing and forwards each event to the progress
    registered with `report_progress_to`. Tune pickles its callbacks with the experiment, so a
    Tuner restored after a killed driver brings this relay back, and the relay reaches the new
    driver's progress (no need to swap callbacks inside a restored Tuner)."""

    def on_step_end(self, iteration, trials, **info):
        if _live is not None:
            _live.on_step_end(iteration, trials, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _live is not None:
            _live.on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _live is not None:
            _live.on_trial_error(iteration, trials, trial, **info)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if _live is not None:
            _live.on_trial_recover(iteration, trials, trial, **info)

    def on_experiment_end(self, trials, **info):
        if _live is not None:
            _live.on_experiment_end(trials, **info)


def relay_dropped(trial_ids: list[str], failed_dependency: str) -> None:
    """Tell the registered progress about trials the scheduler drops because a dependency failed."""
    if _live is not None:
        _live.dropped_trials(trial_ids, failed_dependency)
