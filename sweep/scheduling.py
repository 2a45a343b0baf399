"""Which trial runs next: each trial is released to Ray Tune as soon as its own dependencies
have been published, not when a whole layer of the grid has ended.

`DependencyQueue` holds the order and the bookkeeping (no Ray); `DependencyRelease` is the
Ray Tune `Searcher` that hands its trials to one Tuner: `suggest` returns nothing while no
trial is ready, and Tune asks again as trials complete. A failed dependency (after its retries)
fails its dependants without running them; the runner records them with the dependency's error.
The searcher's state is saved with Tune's experiment state, so `--resume` continues it.

Order among ready trials: first those that others wait for (M_A, translator warm-ups), then
the deepest (a transfer trial whose dependencies are done before a Table I trial that nothing
needs), then the grid's declaration order. Tune asks for one trial whenever it can start one
(or, with `--max-concurrent`, whenever a slot frees), so the choice is made when it matters.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Sequence

from ray.tune.search import Searcher

from protocol.grid import TrialSpec, dependency_layers
from protocol.store import RunStore
from sweep.progress import relay_dropped


def release_order(specs: Sequence[TrialSpec]) -> list[str]:
    """Trial ids in the order ready trials are released (see the module docstring). Dependencies
    outside `specs` (already finished) do not count towards a trial's depth."""
    by_id = {s.trial_id: s for s in specs}
    layers = dependency_layers({t: [d for d in s.depends_on if d in by_id] for t, s in by_id.items()})
    depth = {trial_id: i for i, layer in enumerate(layers) for trial_id in layer}
    needed = {d for s in specs for d in s.depends_on}
    position = {s.trial_id: i for i, s in enumerate(specs)}
    return sorted(by_id, key=lambda t: (t not in needed, -depth[t], position[t]))


class DependencyQueue:
    """Trials waiting for their dependencies. `finished` holds dependencies already published
    (reused from OUT); every other dependency must be among `specs`."""

    def __init__(self, specs: Sequence[TrialSpec], finished: Iterable[str] = ()):
        self.specs = {s.trial_id: s for s in specs}
        self.waiting = release_order(specs)
        self.finished: set[str] = set(finished)
        self.failed: dict[str, str] = {}  # trial id -> the dependency that failed first
        self.running: set[str] = set()

    def _ready(self, trial_id: str) -> bool:
        return all(d in self.finished for d in self.specs[trial_id].depends_on)

    def pop_ready(self) -> TrialSpec | None:
        for trial_id in self.waiting:
            if self._ready(trial_id):
                self.waiting.remove(trial_id)
                self.running.add(trial_id)
                return self.specs[trial_id]
        if not self.running:
            # Nothing runs and nothing is ready: what still waits needs a trial that is neither
            # finished nor planned. Fail it rather than wait for ever.
            for trial_id in list(self.waiting):
                if trial_id in self.waiting:  # not dropped with an earlier one
                    missing = next(d for d in self.specs[trial_id].depends_on if d not in self.finished)
                    self._fail_dependants_of(missing, also=[trial_id])
        return None

    def pop_like(self, first: TrialSpec, key, limit: int) -> list[TrialSpec]:
        """Up to `limit` more ready trials whose `key(spec)` equals `first`'s (never None), in
        release order: the members fused with `first`. Only ready trials: a trial whose
        dependency is not done is never held back by, or holding back, a sibling."""
        wanted = key(first)
        if wanted is None or limit < 1:
            return []
        taken = []
        for trial_id in list(self.waiting):
            if len(taken) == limit:
                break
            if self._ready(trial_id) and key(self.specs[trial_id]) == wanted:
                self.waiting.remove(trial_id)
                self.running.add(trial_id)
                taken.append(self.specs[trial_id])
        return taken

    @property
    def exhausted(self) -> bool:
        return not self.waiting and not self.running

    def finish(self, trial_id: str) -> None:
        self.running.discard(trial_id)
        self.finished.add(trial_id)

    def fail(self, trial_id: str) -> list[str]:
        """A trial failed for good; returns its dependants (transitively), dropped unrun."""
        self.running.discard(trial_id)
        return self._fail_dependants_of(trial_id)

    def _fail_dependants_of(self, trial_id: str, also: Sequence[str] = ()) -> list[str]:
        dropped: list[str] = []
        gone = {trial_id}

        def drop(dependant: str) -> None:
            self.waiting.remove(dependant)
            self.failed[dependant] = trial_id
            dropped.append(dependant)
            gone.add(dependant)

        for dependant in also:
            drop(dependant)
        changed = True
        while changed:
            blocked = [t for t in self.waiting if gone & set(self.specs[t].depends_on)]
            for dependant in blocked:
                drop(dependant)
            changed = bool(blocked)
        return dropped

    def state(self) -> dict[str, Any]:
        return {"waiting": list(self.waiting), "finished": set(self.finished), "failed": dict(self.failed),
                "running": set(self.running)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.waiting, self.finished = list(state["waiting"]), set(state["finished"])
        self.failed, self.running = dict(state["failed"]), set(state["running"])


class DependencyRelease(Searcher):
    """A Tune searcher over a fixed list of trials: `suggest` hands out the next ready trial's
    config (`{"trial": entry}`), None while none is ready, FINISHED when none is left.

    `entries` maps trial id -> what the trainable receives (spec, dependencies, failpoints).
    `out` is the sweep's output location: a trial counts as finished only once it is published
    there (or recorded as not applicable). Trials dropped because a dependency failed are told
    to the driver's progress (sweep.progress.relay_dropped).

    `fuse` > 1: a ready trial goes out with up to `fuse` - 1 other ready trials that may be
    trained with it as one computation (sweep.fusing.group_key) as one Tune trial, whose config
    also holds `members` (the entries of all of them, the first one's included)."""

    def __init__(self, specs: Sequence[TrialSpec], entries: dict[str, dict], out: str,
                 finished: Iterable[str] = (), fuse: int = 1):
        super().__init__()
        self.queue = DependencyQueue(specs, finished)
        self.entries = entries
        self.out = out
        self.fuse = fuse
        self.handed_out: dict[str, list[str]] = {}  # Tune's trial id -> our trial ids
        self._store: RunStore | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # rebuilt from `out` where it is needed
        return state

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore(self.out)
        return self._store

    def suggest(self, trial_id: str) -> dict | None:
        spec = self.queue.pop_ready()
        if spec is None:
            return Searcher.FINISHED if self.queue.exhausted else None
        group = [spec]
        if self.fuse > 1:
            from sweep.fusing import group_key

            group += self.queue.pop_like(spec, group_key, self.fuse - 1)
        self.handed_out[trial_id] = [s.trial_id for s in group]
        config = {"trial": self.entries[spec.trial_id]}
        if len(group) > 1:
            config["members"] = [self.entries[s.trial_id] for s in group]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        for ours in self.handed_out.get(trial_id, []):
            spec = self.queue.specs[ours]
            # Published or not applicable counts even when the Tune trial then errored (a fused
            # group's members publish one by one at its end, and record not applicable at its start).
            if self.store.is_complete(spec) or self.store.is_not_applicable(spec):
                self.queue.finish(ours)
                continue
            dropped = self.queue.fail(ours)
            if dropped:
                relay_dropped(dropped, ours)

    # Tune saves this with its experiment state (and restores it on --resume).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"queue": self.queue.state(), "handed_out": dict(self.handed_out)}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(Path(checkpoint_path), "rb") as handle:
            state = pickle.load(handle)
        self.queue.set_state(state["queue"])
        self.handed_out = {k: [v] if isinstance(v, str) else list(v) for k, v in state["handed_out"].items()}
