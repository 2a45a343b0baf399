"""Failpoints: the one way to make a trial (or a segment worker) fail, or hold a trial at a known
point, on a real Ray runtime, where nothing can be monkeypatched into the worker processes.

`FAILPOINTS` is empty unless code in the driver's process arms it; cxrsweep itself never does, and
no environment variable or flag reaches it. The tests arm it in-process (the `failpoints` fixture
of tests/sweep/conftest.py) or in a driver they start (tests/sweep/armed_main.py):

    FAILPOINTS.fail(glob, times, at_epoch=1)   trials whose id matches `glob` raise
                                               `InjectedFailure` at that epoch, `times` times in
                                               all (-1: always), counted in
                                               OUT/ray/injected-failures/ so that retries on other
                                               nodes see the count. Retries, failures and failed
                                               dependencies are tested with it.
    FAILPOINTS.hold(glob, epoch)               a matching trial stops after the report of that
                                               epoch, writes OUT/ray/held/<trial_id> and waits to
                                               be killed (at most `HOLD_LIMIT_S`, then it raises
                                               `HoldExpired`), once: a resumed trial finds the mark
                                               and goes on. A test kills the driver at a known
                                               point instead of racing it.
    FAILPOINTS.exit_segment_worker_once(path)  in `cxrsweep segment` on Ray (sweep.segment_ray),
                                               the first model worker to reach its second batch
                                               exits abruptly (os._exit) after segmenting it,
                                               before returning it, unless `path` exists; it
                                               creates `path` first, so it happens once per job.
    FAILPOINTS.clear()                         disarm all.

The first armed rule whose glob matches a trial id applies to it (per kind: fail, hold). The
registry lives in the driver only: sweep.runner copies the rules that match into the trials'
entries (`inject_failure`, `hold_at_epoch`), which reach the workers with the trials, and
sweep.segment_ray passes the marker path to its model workers as an argument.

Only the standard library is imported here: the segment workers import this module too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from protocol.grid import TrialSpec
    from protocol.store import RunStore

# How long a held trial waits to be killed before it gives up: long enough for any test's kill,
# short enough that a forgotten hold cannot keep a worker (and its GPU share) forever.
HOLD_LIMIT_S = 600.0


class InjectedFailure(ValueError):
    """Raised by a `fail` failpoint: a ValueError, as a bug deep in an engine may raise one, which
    the command line must report as a bug (its traceback in the log), never as bad input."""


class HoldExpired(RuntimeError):
    """A held trial was not killed within its limit: whatever was to kill it never came."""


# --------------------------------------------------------------------------------------------
# The registry, read by the driver.


@dataclass
class Failpoints:
    """The armed failpoints; empty until `fail`, `hold` or `exit_segment_worker_once` is called."""

    failures: list[tuple[str, dict[str, int]]] = field(default_factory=list)  # (glob, {times, at_epoch})
    holds: list[tuple[str, int]] = field(default_factory=list)  # (glob, epoch)
    segment_exit_marker: str | None = None

    def fail(self, pattern: str, times: int, at_epoch: int = 1) -> None:
        """Trials matching `pattern` raise `InjectedFailure` at `at_epoch`, `times` times (-1: always)."""
        if times < -1 or at_epoch < 1:
            raise ValueError(f"fail({pattern!r}, times={times}, at_epoch={at_epoch}): "
                             "times is -1 (always) or a count >= 0, at_epoch >= 1")
        self.failures.append((pattern, {"times": int(times), "at_epoch": int(at_epoch)}))

    def hold(self, pattern: str, epoch: int) -> None:
        """Trials matching `pattern` stop after reporting `epoch` until they are killed (once)."""
        if epoch < 1:
            raise ValueError(f"hold({pattern!r}, epoch={epoch}): epoch >= 1")
        self.holds.append((pattern, int(epoch)))

    def exit_segment_worker_once(self, marker: str | Path) -> None:
        """One segment model worker exits abruptly after its second batch, unless `marker` exists."""
        self.segment_exit_marker = str(marker)

    def clear(self) -> None:
        self.failures.clear()
        self.holds.clear()
        self.segment_exit_marker = None

    def trial_entries(self, specs: Sequence[TrialSpec]) -> dict[str, dict[str, Any]]:
        """trial_id -> what the armed failpoints add to that trial's entry for the trainable
        (`inject_failure`, `hold_at_epoch`; see `trial_callbacks`), for the trials they match."""
        entries: dict[str, dict[str, Any]] = {}
        for spec in specs:
            entry: dict[str, Any] = {}
            failure = _first_match(spec.trial_id, self.failures)
            if failure is not None:
                entry["inject_failure"] = dict(failure)
            held = _first_match(spec.trial_id, self.holds)
            if held is not None:
                entry["hold_at_epoch"] = held
            if entry:
                entries[spec.trial_id] = entry
        return entries


def _first_match(trial_id: str, rules: list[tuple[str, Any]]) -> Any:
    """The value of the first (glob, value) rule whose glob matches `trial_id`, else None."""
    return next((value for pattern, value in rules if fnmatchcase(trial_id, pattern)), None)


FAILPOINTS = Failpoints()


# --------------------------------------------------------------------------------------------
# The trial's side (sweep.trainables, sweep.fused_trials): epoch callbacks that fail or hold it.


class _FailureHook:
    """Raise at `at_epoch`, at most `times` times (-1: always)."""

    def __init__(self, store: RunStore, trial_id: str, times: int, at_epoch: int):
        self.store, self.trial_id, self.times, self.at_epoch = store, trial_id, times, at_epoch
        self.folder = store.path("ray", "injected-failures")

    def maybe_fail(self, epoch: int) -> None:
        if epoch != self.at_epoch:
            return
        self.store.fs.create_dir(self.folder, recursive=True)
        done = [n for n in self.store.list_files(self.folder) if n.startswith(f"{self.trial_id}.")]
        if 0 <= self.times <= len(done):
            return
        self.store.write_json(f"{self.folder}/{self.trial_id}.{len(done) + 1}", {"epoch": epoch})
        raise InjectedFailure(
            f"injected failure {len(done) + 1} of {'always' if self.times < 0 else self.times} at epoch {epoch} "
            "(failpoint sweep.failpoints.FAILPOINTS.fail)")

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        self.maybe_fail(epoch)


class _HoldHook:
    """After the report of `at_epoch`, mark OUT/ray/held/<trial_id> and wait to be killed, at most
    `limit_s`. Once per trial: a resumed trial finds the mark and goes on."""

    def __init__(self, store: RunStore, trial_id: str, at_epoch: int, limit_s: float = HOLD_LIMIT_S):
        self.store, self.trial_id, self.at_epoch, self.limit_s = store, trial_id, at_epoch, limit_s
        self.mark = store.path("ray", "held", trial_id)

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        if epoch != self.at_epoch or self.store.exists(self.mark):
            return
        self.store.write_json(self.mark, {"epoch": epoch, "at": time.time()})
        deadline = time.monotonic() + self.limit_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        raise HoldExpired(f"{self.trial_id}: held after epoch {epoch} (failpoint sweep.failpoints.FAILPOINTS.hold) "
                          f"but not killed within {self.limit_s:g} s")


def failure_callbacks(trial: dict, store: RunStore, trial_id: str, resumed: bool) -> list:
    """The `inject_failure` callback a trial's entry asks for (none without one). A resumed attempt
    starts past the failing epoch: it fails here at once if it still must."""
    injection = trial.get("inject_failure")
    if not injection:
        return []
    hook = _FailureHook(store, trial_id, int(injection["times"]), int(injection["at_epoch"]))
    hook.maybe_fail(hook.at_epoch if resumed else 0)
    return [hook]


def hold_callbacks(trial: dict, store: RunStore, trial_id: str) -> list:
    """The `hold_at_epoch` callback a trial's entry asks for (none without one)."""
    return [_HoldHook(store, trial_id, int(trial["hold_at_epoch"]))] if trial.get("hold_at_epoch") else []


def trial_callbacks(trial: dict, store: RunStore, trial_id: str, resumed: bool) -> list:
    """The failpoint callbacks of a trial's entry, in the order they run after the trial's own
    reporter: its failure, then its hold."""
    return [*failure_callbacks(trial, store, trial_id, resumed), *hold_callbacks(trial, store, trial_id)]


# --------------------------------------------------------------------------------------------
# The segment worker's side (sweep.segment_ray).


def after_segment_batch(batches_done: int, exit_marker: str | None) -> None:
    """Called by a segment model worker after each batch it segmented (`batches_done` so far), with
    the marker of `exit_segment_worker_once` that the driver passed it (None: not armed)."""
    if exit_marker is None or batches_done < 2:
        return
    try:
        os.close(os.open(exit_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)
