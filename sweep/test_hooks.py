"""The test hooks, all of them: they exist only so that the tests can make a trial (or a worker) fail,
or hold a trial at a known point, on a real Ray runtime, where nothing can be monkeypatched into the
worker processes. Each is off unless its environment variable is set; nothing else in cxrsweep reads
these variables.

    CXRSWEEP_INJECT_FAILURE   "GLOB:TIMES[:EPOCH]" rules joined by ";" (TIMES may be "always",
                              EPOCH defaults to 1); the first rule whose glob matches a trial id
                              applies. The driver (sweep.runner) puts the rule into the matching
                              trials' entries; such a trial raises `InjectedFailure` at that epoch,
                              TIMES times in all (counted in OUT/ray/injected-failures/, so retries
                              on other nodes see the count). E.g.
                              "segmentation-unet-lungs-fold0-*:1:1" fails that trial once, at
                              epoch 1. Retries, failures and failed dependencies are tested with it.
    CXRSWEEP_HOLD             "GLOB:EPOCH" rules joined by ";" (EPOCH >= 1): a matching trial stops
                              after the report of that epoch, writes OUT/ray/held/<trial_id> and
                              waits there until it is killed, once (a resumed trial finds the mark
                              and goes on): a test kills the driver at a known point instead of
                              racing it.
    CXRSWEEP_SEGMENT_HOOK     "exit-once:MARKER": in `cxrsweep segment` on Ray (sweep.segment_ray),
                              the first model worker process to reach its second batch exits
                              abruptly (os._exit) after segmenting it, before returning it, unless
                              the file MARKER exists; it creates MARKER first, so it happens once
                              per job. The driver passes the variable on to its workers.

Only the standard library is imported here: the segment workers import this module too.
"""
from __future__ import annotations

import os
import time
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from protocol.grid import TrialSpec
    from protocol.store import RunStore

INJECT_FAILURE_ENV = "CXRSWEEP_INJECT_FAILURE"
HOLD_ENV = "CXRSWEEP_HOLD"
SEGMENT_HOOK_ENV = "CXRSWEEP_SEGMENT_HOOK"


# --------------------------------------------------------------------------------------------
# The driver's side of CXRSWEEP_INJECT_FAILURE and CXRSWEEP_HOLD: which trials they apply to.


def _first_match(specs: Sequence[TrialSpec], rules: list[tuple[str, Any]]) -> dict[str, Any]:
    """trial_id -> the value of the first (glob, value) rule whose glob matches it."""
    chosen = {}
    for spec in specs:
        for pattern, value in rules:
            if fnmatchcase(spec.trial_id, pattern):
                chosen[spec.trial_id] = value
                break
    return chosen


def failure_injections(specs: Sequence[TrialSpec], setting: str | None = None) -> dict[str, dict]:
    """Trials that the CXRSWEEP_INJECT_FAILURE test hook makes fail: trial_id -> {times, at_epoch}.

    The setting is one or more `GLOB:TIMES[:EPOCH]` rules separated by `;`; the first rule
    whose glob matches a trial id applies to it.
    """
    setting = os.environ.get(INJECT_FAILURE_ENV, "") if setting is None else setting
    rules = []
    for rule in filter(None, (r.strip() for r in setting.split(";"))):
        parts = rule.split(":")
        if len(parts) not in (2, 3) or not (parts[1] == "always" or parts[1].isdigit()):
            raise ValueError(f"{INJECT_FAILURE_ENV}={setting!r}: expected GLOB:TIMES[:EPOCH] rules separated by ';'")
        times = -1 if parts[1] == "always" else int(parts[1])
        rules.append((parts[0], {"times": times, "at_epoch": int(parts[2]) if len(parts) == 3 else 1}))
    return _first_match(specs, rules)


def holds(specs: Sequence[TrialSpec], setting: str | None = None) -> dict[str, int]:
    """Trials that the CXRSWEEP_HOLD test hook stops after an epoch: trial_id -> epoch
    (`GLOB:EPOCH` rules separated by `;`)."""
    setting = os.environ.get(HOLD_ENV, "") if setting is None else setting
    rules = []
    for rule in filter(None, (r.strip() for r in setting.split(";"))):
        parts = rule.split(":")
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"{HOLD_ENV}={setting!r}: expected GLOB:EPOCH rules (EPOCH >= 1) separated by ';'")
        rules.append((parts[0], int(parts[1])))
    return _first_match(specs, rules)


def trial_entries(specs: Sequence[TrialSpec]) -> dict[str, dict[str, Any]]:
    """trial_id -> what the hooks add to that trial's entry for the trainable (`inject_failure`,
    `hold_at_epoch`; see `trial_callbacks`), for the trials a hook applies to. Reads both variables
    now, so a malformed setting is refused before anything runs."""
    injections, held = failure_injections(specs), holds(specs)
    entries: dict[str, dict[str, Any]] = {}
    for spec in specs:
        entry: dict[str, Any] = {}
        if spec.trial_id in injections:
            entry["inject_failure"] = injections[spec.trial_id]
        if spec.trial_id in held:
            entry["hold_at_epoch"] = held[spec.trial_id]
        if entry:
            entries[spec.trial_id] = entry
    return entries


# --------------------------------------------------------------------------------------------
# The trial's side (sweep.trainables.run_trial): epoch callbacks that fail or hold it.


class InjectedFailure(ValueError):
    """Raised by the failure-injection test hook: a ValueError, as a bug deep in an engine may
    raise one, which the command line must report as a bug (its traceback in the log), never as
    bad input."""


class _FailureHook:
    """The test hook: raise at `at_epoch`, at most `times` times (-1: always)."""

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
            f"(test hook {INJECT_FAILURE_ENV})")

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        self.maybe_fail(epoch)


class _HoldHook:
    """The test hook: after the report of `at_epoch`, mark OUT/ray/held/<trial_id> and wait to be
    killed. Once per trial: a resumed trial finds the mark and goes on."""

    def __init__(self, store: RunStore, trial_id: str, at_epoch: int):
        self.store, self.at_epoch = store, at_epoch
        self.mark = store.path("ray", "held", trial_id)

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        if epoch != self.at_epoch or self.store.exists(self.mark):
            return
        self.store.write_json(self.mark, {"epoch": epoch, "at": time.time()})
        while True:
            time.sleep(1)


def trial_callbacks(trial: dict, store: RunStore, trial_id: str, resumed: bool) -> list:
    """The engine callbacks of the hooks that a trial's entry (`trial_entries`) asks for, in the
    order they run after the trial's own reporter; none for a trial no hook applies to. A resumed
    attempt starts past the failing epoch: it fails here at once if it still must."""
    callbacks: list = []
    injection = trial.get("inject_failure")
    if injection:
        hook = _FailureHook(store, trial_id, int(injection["times"]), int(injection["at_epoch"]))
        hook.maybe_fail(hook.at_epoch if resumed else 0)
        callbacks.append(hook)
    if trial.get("hold_at_epoch"):
        callbacks.append(_HoldHook(store, trial_id, int(trial["hold_at_epoch"])))
    return callbacks


# --------------------------------------------------------------------------------------------
# CXRSWEEP_SEGMENT_HOOK (sweep.segment_ray).


def segment_runtime_env() -> dict | None:
    """The runtime_env that passes CXRSWEEP_SEGMENT_HOOK on to the segment workers (None: unset)."""
    hook = os.environ.get(SEGMENT_HOOK_ENV)
    return {"env_vars": {SEGMENT_HOOK_ENV: hook}} if hook else None


def after_segment_batch(batches_done: int) -> None:
    """Called by a segment model worker after each batch it segmented (`batches_done` so far)."""
    hook = os.environ.get(SEGMENT_HOOK_ENV, "")
    if batches_done >= 2 and hook.startswith("exit-once:"):
        try:
            os.close(os.open(hook.split(":", 1)[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)
