"""The one epoch loop every engine fills in (the supervised Trainer, the transfer runs on its
back, and the proposed method's ProposedRun).

A run is a subclass of `EpochLoop`. The loop owns what all runs share: counting epochs against
`total_epochs`, keeping the best epoch through the run's `selector` (per-image scores in, "keep
this one?" out), the checkpoint clock, the history, and the callbacks. What a run computes is
its part:

    epoch_metrics()      train one epoch; its metrics (losses, timings)
    evaluates(epoch)     whether this epoch is judged (default: every epoch)
    evaluate(metrics)    score the epoch: add its validation metrics, return (per-image scores
                         the selector reads, their mean as the run's selection score)
    snapshot()           the checkpoint kept when the epoch is the best so far
    best_metrics()       the best-so-far entries every epoch's metrics carry
    log_epoch(metrics), after_epoch()
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from engine import checkpoints as ckpt


class EpochCallback(Protocol):
    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None: ...


class Selector(Protocol):
    def consider(self, scores: np.ndarray) -> bool: ...


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


class EpochLoop(ckpt.ResumableRun):
    """What a run that trains epoch by epoch shares; see the module's docstring for the hooks.

    Subclasses set `selector` and call `start_bookkeeping` (the state `ResumableRun` restores)."""

    selector: Selector

    def start_bookkeeping(self, checkpoint_every_s: float) -> None:
        """What a fresh run starts from (a resume replaces it from last.pt)."""
        self.epoch, self.best_val, self.best_epoch = 0, -math.inf, 0
        self.best: dict[str, Any] | None = None  # the best epoch's checkpoint, kept on the device
        self.history: list[dict] = []
        self.duration_s = 0.0
        self.clock = ckpt.CheckpointClock(checkpoint_every_s)

    @property
    def total_epochs(self) -> int:
        raise NotImplementedError

    def epoch_metrics(self) -> dict[str, Any]:
        raise NotImplementedError

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

    def fit(self, callbacks: Sequence[EpochCallback]) -> int:
        """Train from `epoch` up to `total_epochs`; returns the number of epochs trained now."""
        trained = 0
        while self.epoch < self.total_epochs:
            started = time.perf_counter()
            self.end_epoch(self.epoch_metrics(), started, callbacks)
            trained += 1
        return trained

    def end_epoch(self, trained_metrics: dict[str, Any], started: float, callbacks: Sequence[EpochCallback]) -> None:
        """Everything after an epoch's training: judge it, keep it if best, checkpoint, call back.
        A fused group (engine.fused) trains its members' epochs together and ends each here."""
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
