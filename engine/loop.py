"""The one training loop of the engine: one epoch driver (`drive`) and one batch loop
(`train_one_epoch`), which every kind of training runs on.

The split is Lightning's. The loop owns epochs, batches, keeping the best epoch, the checkpoint
clock, the history and the callbacks; a run declares its part:

- what one epoch's batches are and what one batch step does (`EpochSteps`: `epoch_batches()`,
  `training_step(batch)`, `epoch_end(started)`); `train_one_epoch` runs them;
- how an epoch is judged and kept (an `EpochLoop` subclass: `evaluates(epoch)`,
  `evaluate(metrics)` -> per-image scores for its `selector`, `snapshot()`, `best_metrics()`,
  `log_epoch(metrics)`, `after_epoch()`);
- what happens before the first epoch and after the last (`TrainingRun`: `begin()`,
  `finish(epochs_trained)`, `describe()`).

How the epochs of a set of runs are executed is a strategy: `ALONE` (a run trains its own epoch)
or engine.fused's (K runs of one network train each epoch as one computation, each run's epoch
then judged and kept by its own `end_epoch`). `drive` is the same for both.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch

from engine.runtime import checkpoints as ckpt
from engine.runtime.device import load_scaler_state
from protocol.run_dir import RunDirectoryPaths

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite: the run has no result to give and fails with this
    reason rather than going on."""


class EpochCallback(Protocol):
    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None: ...


class Selector(Protocol):
    def consider(self, scores: np.ndarray) -> bool: ...


class EpochSteps(Protocol):
    """What one epoch of training is, batch by batch (a run, or a fused group of runs)."""

    def epoch_batches(self) -> Iterable[Any]:
        """The epoch's batches (its random draws made here, before its first step)."""

    def training_step(self, batch: Any) -> None:
        """One optimisation step on `batch`; losses stay on the device until `epoch_end`."""

    def epoch_end(self, started: float) -> Any:
        """The epoch's metrics (`started`: when its first batch was drawn)."""


def train_one_epoch(steps: EpochSteps) -> Any:
    """The batch loop: every batch of the epoch through its step, then the epoch's metrics."""
    started = time.perf_counter()
    for batch in steps.epoch_batches():
        steps.training_step(batch)
    return steps.epoch_end(started)


class TrainingRun(Protocol):
    """What `drive` and engine.fused need of a run."""

    run_dir: Path
    device: torch.device
    epoch: int

    @property
    def total_epochs(self) -> int: ...

    def begin(self) -> bool:
        """Get ready to train (resume from last.pt, score the starting point); whether it resumed."""

    def epoch_metrics(self) -> dict[str, Any]:
        """Train one epoch alone; its metrics."""

    def end_epoch(self, trained_metrics: dict[str, Any], started: float, callbacks: Sequence[EpochCallback]) -> None:
        """Judge, keep, checkpoint and report an epoch trained alone or in a fused group."""

    def finish(self, epochs_trained: int) -> Any:
        """The run's result once its epochs are trained."""

    def describe(self) -> str: ...


class Strategy(Protocol):
    """How the epochs of a set of runs are executed."""

    contains_failures: bool  # whether one run's failure leaves the others training

    def train_epoch(self, indices: Sequence[int], runs: Sequence[TrainingRun]) -> list[Any]:
        """One epoch of each run (`indices` name them in the driver's list): per run its metrics,
        or (contained failures only) the exception that failed it."""

    def ending(self, index: int) -> Any:
        """A context around the end of run `index`'s epoch."""


class _Alone:
    """Each run trains its own epoch; a failure is the caller's."""

    contains_failures = False

    def train_epoch(self, indices: Sequence[int], runs: Sequence[TrainingRun]) -> list[Any]:
        return [run.epoch_metrics() for run in runs]

    @contextmanager
    def ending(self, index: int) -> Iterator[None]:
        yield


ALONE = _Alone()


def drive(runs: Sequence[TrainingRun], strategy: Strategy, callbacks: Sequence[Sequence[EpochCallback]],
          after_epoch: Callable[[list[int]], None] | None = None) -> tuple[list[int], dict[int, BaseException]]:
    """The epoch driver: train every run from its `epoch` up to its `total_epochs`, one epoch of
    all live runs at a time, each ended by the run itself (`callbacks[i]` are run i's). Returns
    the epochs each run trained now and, for a strategy that contains failures, the runs that
    failed with their exception. `after_epoch(indices)` is called after each epoch with the runs
    that ended one in it."""
    trained = [0] * len(runs)
    failed: dict[int, BaseException] = {}
    while True:
        live = [i for i, run in enumerate(runs) if i not in failed and run.epoch < run.total_epochs]
        if not live:
            break
        started = time.perf_counter()
        outcomes = strategy.train_epoch(live, [runs[i] for i in live])
        ended = []
        for i, outcome in zip(live, outcomes):
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                with strategy.ending(i):
                    runs[i].end_epoch(outcome, started, callbacks[i])
                trained[i] += 1
                ended.append(i)
            except Exception as exc:
                if not strategy.contains_failures:
                    raise
                log.error("%s: failed at epoch %d: %s", runs[i].run_dir, runs[i].epoch + 1, exc)
                failed[i] = exc
        if after_epoch is not None:
            after_epoch(ended)
    return trained, failed


class HighestMean:
    """The paper's selection: the epoch of the highest mean validation Jaccard (ties keep the earlier)."""

    def __init__(self, best: float = -math.inf):
        self.best = best

    def consider(self, scores: np.ndarray) -> bool:
        mean = float(scores.mean())
        if mean > self.best:
            self.best = mean
            return True
        return False


class EpochLoop(RunDirectoryPaths):
    """What a run that trains epoch by epoch shares; see the module's docstring for the hooks.

    Subclasses set `selector` and call `start_bookkeeping` (the state a resume restores from
    last.pt), and declare their batches and steps (`EpochSteps`). A resume reads last.pt
    (`read_last`; a run whose last.pt is not a segmenter checkpoint, the translator warm-up,
    overrides `read_state`) and restores the loop's part of it (`restore_progress`); the run
    restores its own networks and optimisers."""

    selector: Selector

    def start_bookkeeping(self, checkpoint_every_s: float) -> None:
        """What a fresh run starts from (a resume replaces it from last.pt)."""
        self.epoch, self.best_val, self.best_epoch = 0, -math.inf, 0
        self.best: dict[str, Any] | None = None  # the best epoch's checkpoint, kept on the device
        self.history: list[dict] = []
        self.duration_s = 0.0
        self.clock = ckpt.CheckpointClock(checkpoint_every_s)

    # --- resume: the loop's part of last.pt ---
    def read_state(self, path: Path) -> dict[str, Any]:
        return ckpt.read_checkpoint(path)

    def read_last(self, comparable: Callable[[dict], dict] = dict) -> dict[str, Any] | None:
        """The run directory's last.pt, or None; refused when the run was started with another
        config (as `comparable` sees both)."""
        if not self.last_path.exists():
            return None
        state = self.read_state(self.last_path)
        ckpt.check_resumable(self.last_path, comparable(state["config"]), comparable(self.cfg.to_dict()))
        return state

    def restore_progress(self, state: dict[str, Any]) -> None:
        """The loss scaler, the random state and the best-so-far bookkeeping a last.pt holds."""
        load_scaler_state(self.scaler, state.get("scaler"))
        ckpt.restore_rng_state(state["rng"])
        self.epoch, self.best_val, self.best_epoch = state["epoch"], state["best_val_jaccard"], state["best_epoch"]
        self.best = ckpt.best_of(state, self.run_dir)
        self.history, self.duration_s = list(state["history"]), float(state["duration_s"])

    @property
    def total_epochs(self) -> int:
        raise NotImplementedError

    # --- one epoch's batches and steps (EpochSteps) ---
    def epoch_batches(self) -> Iterable[Any]:
        raise NotImplementedError

    def training_step(self, batch: Any) -> None:
        raise NotImplementedError

    def epoch_end(self, started: float) -> dict[str, Any]:
        raise NotImplementedError

    def train_epoch(self) -> dict[str, Any]:
        """One epoch of this run alone (the batch loop over its own steps); its metrics."""
        return train_one_epoch(self)

    def epoch_metrics(self) -> dict[str, Any]:
        return self.train_epoch()

    # --- how an epoch is judged ---
    def evaluates(self, epoch: int) -> bool:
        return True

    def evaluate(self, metrics: dict[str, Any]) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def best_metrics(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch}

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def begin(self) -> bool:
        raise NotImplementedError

    def finish(self, epochs_trained: int) -> Any:
        raise NotImplementedError

    def run(self, callbacks: Sequence[EpochCallback]) -> Any:
        """The whole run alone: begin (or resume), train its epochs, finish."""
        self.begin()
        return self.finish(self.fit(callbacks))

    def fit(self, callbacks: Sequence[EpochCallback]) -> int:
        """Train from `epoch` up to `total_epochs` alone; returns the number of epochs trained now."""
        trained, _ = drive([self], ALONE, [callbacks])
        return trained[0]

    def end_epoch(self, trained_metrics: dict[str, Any], started: float, callbacks: Sequence[EpochCallback]) -> None:
        """Everything after an epoch's training: judge it, keep it if best, checkpoint, call back."""
        self.epoch += 1
        metrics: dict[str, Any] = {"epoch": self.epoch, **trained_metrics}
        if self.evaluates(self.epoch):
            scores, score = self.evaluate(metrics)
            if self.selector.consider(scores):
                self.best_val, self.best_epoch = score, self.epoch
                self.best = self.snapshot()
        metrics.update(self.best_metrics())
        metrics["epoch_s"] = time.perf_counter() - started
        self.duration_s += metrics["epoch_s"]
        self.history.append(metrics)
        if self.clock.due(final=self.epoch == self.total_epochs):
            metrics.update(self.clock.write(self._last_state, self.last_path))
        self.log_epoch(metrics)
        self.after_epoch()
        for callback in callbacks:
            callback(self.epoch, dict(metrics), self.run_dir)
