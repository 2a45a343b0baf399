"""Which failed trials Ray Tune retries, each from its last checkpoint.

Tune counts every failure of a trial against one budget (`FailureConfig.max_failures`): an
exception the trial raised and the loss of the worker process it ran in. On a cluster of spot
instances the second is the normal case, not a fault of the trial: a reclaimed node takes its
trials' processes with it (Tune sees `ActorUnavailableError` / `ActorDiedError`), and a trial of a
paper sweep may be on a node that is reclaimed more than once. So the sweep keeps two budgets:

- `--retries` (`SweepOptions.retries`) for the trial's own errors: a bug fails after that many
  retries instead of burning more GPU time;
- `LOST_WORKER_RETRIES` for losses of the trial's worker process (its node reclaimed or crashed,
  the process killed), on top of it.

`--retries 0` retries nothing, a lost worker included. A node that Ray drained for preemption
before it went (`RayActorError.preempted`) is not counted by Tune in the first place.

The lost-worker budget is given back after the fact: Tune decides whether to retry a failure
before its callbacks hear of it, and one budget cannot both refuse a trial's next own error and
accept its next lost worker. So a trial that has used up its `--retries` on its own errors and
then loses its worker fails; `--resume` starts it again from its last checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from ray import cloudpickle, tune
from ray.exceptions import RayActorError, RayTaskError
from ray.tune import Callback

from errors import UserError
from sweep.options import LOST_WORKER_RETRIES


def lost_worker(error: BaseException | None) -> RayActorError | None:
    """`error` as the loss of the trial's worker process (its node lost, the process killed), or
    None when it is an exception the trial raised, including one in its start-up."""
    if isinstance(error, RayTaskError) and not isinstance(error, RayActorError):
        error = error.as_instanceof_cause()
    return error if isinstance(error, RayActorError) and not error.actor_init_failed else None


def failure_config(retries: int) -> tune.FailureConfig:
    if retries < 0:
        raise UserError(f"--retries {retries}: must be 0 or more")
    return tune.FailureConfig(max_failures=retries)


def callbacks(retries: int) -> list[Callback]:
    """The Tune callbacks that give a trial its lost-worker retries (none with --retries 0)."""
    return [LostWorkerRetries(retries)] if retries > 0 else []


class LostWorkerRetries(Callback):
    """After a retried failure that was a lost worker, the trial's Tune budget grows by one, so the
    loss does not use up a retry meant for the trial's own errors; at most `lost` times a trial.
    The budget is the trial's own (`Trial.max_failures`), saved with Tune's experiment state, so a
    restored sweep keeps counting where it was."""

    def __init__(self, retries: int, lost: int = LOST_WORKER_RETRIES):
        self.retries, self.lost = retries, lost

    def on_trial_recover(self, iteration, trials, trial, **info):
        if trial.max_failures - self.retries >= self.lost:
            return
        lost = lost_worker(last_error(trial))
        # A node drained for preemption before it went: Tune did not count the loss.
        if lost is not None and not lost.preempted:
            trial.max_failures += 1
            trial.invalidate_json_state()


def last_error(trial) -> BaseException | None:
    """The trial's latest error as Tune recorded it on the driver (its pickled copy in the trial's
    local folder, written before Tune decides whether to retry)."""
    path = trial.pickled_error_file
    if not path or not Path(path).is_file():
        return None
    try:
        return cloudpickle.loads(Path(path).read_bytes())
    except Exception:  # an error that does not unpickle here (e.g. its class is not importable) is the trial's own
        return None


def describe_lost_worker(error: BaseException) -> str | None:
    """The failure line of a trial that ended because its worker was lost; None for other errors."""
    lost = lost_worker(error)
    if lost is None:
        return None
    first = str(lost).strip().splitlines()[0] if str(lost).strip() else ""
    return f"its worker process or node was lost ({type(lost).__name__}: {first})"
