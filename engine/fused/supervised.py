"""Several supervised runs of one network trained as one computation on one device.

The grid's small jobs (the 5 folds of a Table I cell, the fractions and repetitions of a Table II
baseline) are the same network with the same hyper-parameters on different images. Alone, a
batch-4 step leaves a GPU mostly idle. Here the members' parameters, batch-norm buffers and Adam
moments are stacked along a leading member axis (`torch.func.stack_module_state`), and one
vmapped forward / backward trains them all: the horizontal fusion of HFTA (Wang et al., MLSys
2021), without rewriting the networks.

Each member is still its own `engine.supervised.Trainer` (or a subclass: the transfer runs that
train as one, finetune, scratch and self-training). Its images, shuffle and augmentation
stream, optimiser state, batch-norm statistics, epoch selection, checkpoints, resume and test
outputs are those of a separate run; only the training step is shared. Between epochs the
members' own modules and optimisers hold the truth (stacked again at the start of every epoch),
so everything after the step is the Trainer's code unchanged.

Two ways to run the shared step (`grouped_on`): on a GPU one vmapped forward / backward for all
members (grouped kernels: the point of fusing), whose convolutions sum in another order than a
member's own run (about 1e-7 apart per layer); on the CPU, where grouped kernels bring no speed,
each member's network runs on its rows of the stacked state, and a fused member is then its
separate run bit for bit (tests/engine/fused/test_fused.py checks both ways).

A member that raises, or whose training loss is not finite, fails alone: its result is its
exception and its siblings go on. Either way the members' arithmetic stays apart, so one member's
NaN never reaches another's weights.
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from engine.data.augmentation import augment
from engine.data.segmentation import SegmentationData
from engine.fused.stacking import MemberDropout, grouped_on, member_outcomes, stack_adam, unstack_adam
from engine.loop import EpochCallback, TrainingRun, drive, train_one_epoch
from engine.runtime import checkpoints as ckpt
from engine.runtime.device import autocast_for, torch_threads
from engine.supervised import Trainer, check_finite_loss, epoch_seed
from protocol.config import RunConfig
from protocol.run_dir import RunResult

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


# What members must share to be one computation: the network's shapes, the step's shape and
# count, the optimiser's settings (one stacked Adam) and the device.
FUSE_FIELDS = ("model", "width", "image_size", "batch_size", "epochs", "lr", "weight_decay", "beta1", "beta2",
               "device")


def fuse_key(cfg: RunConfig) -> tuple:
    return tuple(getattr(cfg, name) for name in FUSE_FIELDS)


@dataclass
class Member:
    """One run of a fused group: what `train_supervised` would be called with, or (`trainer`
    given) how to build a run that trains as a `Trainer` does, e.g.
    engine.transfer.dispatch.transfer_trainer for finetune, scratch and self-training."""

    cfg: RunConfig
    data: SegmentationData | None
    run_dir: Path
    callbacks: Sequence[EpochCallback] = field(default_factory=tuple)
    trainer: Callable[[], TrainingRun] | None = None
    step: type | None = None  # the fused step that trains it (None: FusedStep; the group's first member's counts)

    def start(self) -> TrainingRun:
        """The member's Trainer (or run of `step`'s kind), ready for `begin()`."""
        return self.trainer() if self.trainer is not None else Trainer(self.cfg, self.data, Path(self.run_dir))


class FusedStep:
    """The live members of one fused epoch: their stacked state, and the epoch's training.

    `rng_states` are the members' own global random states (what their separate runs would hold
    in `torch.get_rng_state()`); the epoch draws their dropout masks from them and leaves them
    advanced in `self.rng_states`. `grouped`: one vmapped forward for all members (grouped
    kernels, summed in another order than a member's own run) or one forward per member on its
    rows of the stacked state; None: the device's way (`grouped_on`)."""

    FIELDS = FUSE_FIELDS

    @staticmethod
    def shape(trainer: Trainer) -> tuple:
        """What a member shares with its group (fuse_key), once it is known to have epochs to train."""
        if trainer.cfg.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {trainer.cfg.epochs}")
        return fuse_key(trainer.cfg)

    def __init__(self, trainers: Sequence[Trainer], rng_states: Sequence[torch.Tensor], grouped: bool | None = None):
        self.trainers = list(trainers)
        first = self.trainers[0]
        self.grouped = grouped_on(first.device) if grouped is None else grouped
        if first.scaler.is_enabled():
            raise ValueError("fused training needs bfloat16 or float32 arithmetic; this device trains in float16 "
                             "with loss scaling (run these trials unfused: --fuse 1)")
        self.device = first.device
        self.modules = [ckpt.unwrap(t.model) for t in self.trainers]
        for module in self.modules:  # as the epoch trains them (a validation leaves some in eval mode)
            module.train()
        self.params, self.buffers = stack_module_state(self.modules)
        self.optimizer = stack_adam([t.optimizer for t in self.trainers], self.modules, self.params,
                                    [t.run_dir for t in self.trainers])
        self.base = copy.deepcopy(self.modules[0]).to("meta")
        self.dropout = MemberDropout(self.base) if any(
            isinstance(m, torch.nn.Dropout) for m in self.base.modules()) else None
        self.generators = []
        for state in rng_states:
            generator = torch.Generator()
            generator.set_state(state)
            self.generators.append(generator)

    @property
    def rng_states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def _forward(self, rows: list[int], images: torch.Tensor) -> torch.Tensor:
        """The networks of `rows` on their own batches ([members, batch, ...] in, out alike)."""
        masks = {}
        if self.dropout is not None:
            masks = self.dropout.masks(self.base, self.params, self.buffers, tuple(images.shape[1:]),
                                       [self.generators[row] for row in rows], self.device)

        if not self.grouped:
            return self._forward_each(rows, images, masks)
        every = rows == list(range(len(self.trainers)))
        if every:
            params, buffers = self.params, self.buffers
        else:
            index = torch.tensor(rows, device=self.device)
            params = {name: p.index_select(0, index) for name, p in self.params.items()}
            buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        with autocast_for(self.device):
            out = vmap(self._run_member, randomness="different")(params, buffers, images, masks)
        if not every:
            with torch.no_grad():  # batch-norm statistics the subset updated in its copies
                for name, b in buffers.items():
                    self.buffers[name][index] = b
        return out

    def _forward_each(self, rows: list[int], images: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """`_forward` member by member: each network runs on its own rows of the stacked weights and
        statistics (views, so gradients and batch-norm updates land in the stacked state), in the
        kernels and summation order of its separate run."""
        params = {name: p.unbind(0) for name, p in self.params.items()}
        buffers = {name: b.unbind(0) for name, b in self.buffers.items()}
        out = []
        with autocast_for(self.device):
            for j, row in enumerate(rows):
                out.append(self._run_member({n: p[row] for n, p in params.items()},
                                            {n: b[row] for n, b in buffers.items()}, images[j],
                                            {name: m[j] for name, m in masks.items()}))
        return torch.stack(out)

    def _run_member(self, params: dict, buffers: dict, images: torch.Tensor, masks: dict) -> torch.Tensor:
        """One member's network on its batch, its dropout masks in place (vmapped, or called as is)."""
        if self.dropout is not None:
            self.dropout.current = masks
        try:
            return functional_call(self.base, (params, buffers), (images,))
        finally:
            if self.dropout is not None:
                self.dropout.current = None

    # --- one epoch of every member, batch by batch (engine.loop.EpochSteps) ---
    def epoch_batches(self) -> range:
        """Each member's shuffle and augmentation stream, as its run alone draws them; the batch
        starts of the longest member's epoch (a shorter member sits out the last ones)."""
        self.outcome: list[dict[str, Any] | BaseException | None] = [None] * len(self.trainers)
        self.epoch_generators, self.orders = [], []
        for t in self.trainers:
            t.model.train()
            generator = torch.Generator().manual_seed(epoch_seed(t.cfg.seed, t.epoch))
            self.epoch_generators.append(generator)
            self.orders.append(torch.randperm(len(t.train_images), generator=generator).to(self.device))
        self.base.train()  # a copy of the first member as it was (in eval mode after a validation)
        for layer in (self.dropout.layers.values() if self.dropout else ()):
            layer.eval()  # the member's own masks come in through the hook
        self.totals = [torch.zeros((), device=self.device) for _ in self.trainers]
        return range(0, max(len(order) for order in self.orders), self.trainers[0].cfg.batch_size)

    def training_step(self, start: int) -> None:
        """One step of every member with a batch at `start`; members of one batch shape share a forward."""
        batch_size = self.trainers[0].cfg.batch_size
        batches: dict[tuple, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for row, (t, order) in enumerate(zip(self.trainers, self.orders)):
            index = order[start:start + batch_size]
            if self.outcome[row] is not None or len(index) == 0:
                continue
            try:
                images, masks = t.train_images[index], t.train_masks[index].long()
                images, masks = augment(t.cfg.augmentation, images, masks, self.epoch_generators[row])
            except Exception as exc:  # this member's data or augmentation: it fails alone
                self.outcome[row] = exc
                continue
            batches.setdefault(tuple(images.shape), []).append((row, images, masks))
        stepped: list[int] = []
        for group in batches.values():
            rows = [row for row, _, _ in group]
            out = self._forward(rows, torch.stack([images for _, images, _ in group]))
            losses = []
            for j, (row, _, masks) in enumerate(group):
                with autocast_for(self.device):
                    losses.append(self.trainers[row].loss_fn(out[j], masks))
                self.totals[row] += losses[-1].detach() * len(masks)
            torch.stack(losses).sum().backward()
            stepped += rows
        if stepped:
            self.optimizer.step(sorted(stepped))
        for p in self.params.values():
            p.grad = None

    def epoch_end(self, started: float) -> list[dict[str, Any] | BaseException]:
        """Per member its epoch's metrics, or the exception that failed it."""
        train_s = time.perf_counter() - started
        self._unstack()

        def metrics(row: int) -> dict[str, Any]:
            t = self.trainers[row]
            loss = float(self.totals[row]) / len(t.train_images)
            t.trained_epoch()
            check_finite_loss(t, loss)
            return {"train_loss": loss, "train_s": train_s, "fused_members": len(self.trainers),
                    "train_images_per_s": len(t.data.train_images) / max(train_s, 1e-9)}

        return member_outcomes(self.outcome, metrics)

    def train_epoch(self) -> list[dict[str, Any] | BaseException]:
        """One epoch of every member (each from its own epoch count)."""
        return train_one_epoch(self)

    @torch.no_grad()
    def _unstack(self) -> None:
        """Each member's weights, statistics and Adam state back into its own module and optimiser."""
        unstack_adam(self.optimizer, [t.optimizer for t in self.trainers], self.modules)
        for row, module in enumerate(self.modules):
            for name, buffer in module.named_buffers():
                buffer.copy_(self.buffers[name][row])


class Fused:
    """engine.loop's strategy for a fused group: each epoch, one `step_type` (FusedStep, or
    engine.fused.proposed.FusedProposedStep) over the live members' stacked state trains them all;
    each member's failure is its own. The global random state is each member's own around its
    step and its epoch's end (what its checkpoint saves and its run alone would hold)."""

    contains_failures = True

    def __init__(self, step_type: type, rng: dict[int, torch.Tensor], grouped: bool | None):
        self.step_type, self.rng, self.grouped = step_type, rng, grouped

    def train_epoch(self, indices: Sequence[int], runs: Sequence[TrainingRun]) -> list[Any]:
        step = self.step_type(runs, [self.rng[i] for i in indices], self.grouped)
        outcomes = step.train_epoch()
        self.ended_states = dict(zip(indices, step.rng_states))
        return outcomes

    @contextmanager
    def ending(self, index: int) -> Iterator[None]:
        torch.set_rng_state(self.ended_states[index])
        yield
        self.rng[index] = torch.get_rng_state()


def _start_members(members: Sequence[Member], step_type: type) -> tuple[dict[int, TrainingRun], dict[int, torch.Tensor],
                                                                          dict[int, BaseException]]:
    """Each member's run, begun (or resumed), with its global random state as it began; a member
    that cannot start, or does not share the group's shape (the first started member's), fails alone."""
    runs: dict[int, TrainingRun] = {}
    rng: dict[int, torch.Tensor] = {}
    failed: dict[int, BaseException] = {}
    for i, member in enumerate(members):
        try:
            Path(member.run_dir).mkdir(parents=True, exist_ok=True)
            run = member.start()  # seeds the global stream
            own = step_type.shape(run)
            shape = next((step_type.shape(r) for r in runs.values()), own)
            if own != shape:
                raise ValueError(f"fused members must share {', '.join(step_type.FIELDS)}: this one trains "
                                 f"{own}, the group {shape}")
            resumed = run.begin()  # or restores it
            log.info("%s %s fused with %d other run(s) on %s, writing to %s",
                     "resuming" if resumed else "training", run.describe(), len(members) - 1,
                     run.device, member.run_dir)
            runs[i], rng[i] = run, torch.get_rng_state()
        except Exception as exc:
            log.exception("%s: could not start", member.run_dir)
            failed[i] = exc
    return runs, rng, failed


def train_fused(members: Sequence[Member], after_epoch: Callable[[list[int]], None] | None = None,
                grouped: bool | None = None) -> list[RunResult | BaseException]:
    """Train the members together on engine.loop's driver; per member (in order) its RunResult, as
    `train_supervised` returns it, or the exception that failed it. `after_epoch(indices)` is called
    after each fused epoch with the members that ended an epoch in it (their callbacks have run).
    `grouped`: see FusedStep (None: the device's way, `grouped_on`)."""
    if not members:
        return []
    step_type = members[0].step or FusedStep
    outer_rng = torch.get_rng_state()
    try:
        with torch_threads(members[0].cfg.num_threads):
            runs, rng, failed = _start_members(members, step_type)
            order = sorted(runs)  # the members that started, by their place in `members`
            strategy = Fused(step_type, {j: rng[i] for j, i in enumerate(order)}, grouped)
            trained, failed_training = drive(
                [runs[i] for i in order], strategy, [members[i].callbacks for i in order],
                None if after_epoch is None else lambda ended: after_epoch([order[j] for j in ended]))
            failed.update({order[j]: exc for j, exc in failed_training.items()})
            results: list[RunResult | BaseException] = []
            for i in range(len(members)):
                if i in failed:
                    results.append(failed[i])
                    continue
                j = order.index(i)
                try:
                    torch.set_rng_state(strategy.rng[j])
                    results.append(runs[i].finish(trained[j]))
                except Exception as exc:
                    results.append(exc)
            return results
    finally:
        torch.set_rng_state(outer_rng)
