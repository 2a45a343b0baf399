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
separate run bit for bit (tests/engine/test_fused.py checks both ways).

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

from engine import checkpoints as ckpt
from engine.augmentation import augment
from engine.data import SegmentationData
from engine.device import autocast_for, torch_threads
from engine.loop import EpochCallback, TrainingRun, drive, train_one_epoch
from engine.supervised import Trainer, check_finite_loss, epoch_seed
from protocol.config import TRAINER_METHODS, RunConfig, translator_arguments
from protocol.grid import SEGMENTATION, TRANSFER
from protocol.run_dir import RunResult

if TYPE_CHECKING:
    from protocol.grid import TrialSpec

log = logging.getLogger(__name__)

# What members must share to be one computation: the network's shapes, the step's shape and
# count, the optimiser's settings (one stacked Adam) and the device.
FUSE_FIELDS = ("model", "width", "image_size", "batch_size", "epochs", "lr", "weight_decay", "beta1", "beta2",
               "device")


def grouped_on(device: torch.device) -> bool:
    """Whether a fused step runs its members' networks as one vmapped computation (grouped
    kernels: a GPU, where K small networks otherwise leave the device idle) or member by member on
    their rows of the stacked state (the CPU: grouped convolutions are no faster there, and each
    member's arithmetic is then its separate run's, bit for bit; benchmarks/bench_fused.py)."""
    return device.type != "cpu"


# What proposed-method runs (engine.fused_proposed) must share besides: M_A's optimiser and the
# transfer epochs, the translator (its arguments are its losses' weights) and the game's optimisers.
PROPOSED_FUSE_FIELDS = ("model", "width", "image_size", "batch_size", "transfer_epochs", "lr", "weight_decay",
                        "beta1", "beta2", "device", "translator", "gan_lr", "gan_beta1", "gan_beta2",
                        "gan_weight_decay", "d_lr_ratio", "loss")


def fuse_key(cfg: RunConfig) -> tuple:
    return tuple(getattr(cfg, name) for name in FUSE_FIELDS)


def proposed_fuse_key(cfg: RunConfig) -> tuple:
    return (*(getattr(cfg, name) for name in PROPOSED_FUSE_FIELDS), *sorted(translator_arguments(cfg).items()))


def proposed_fusable(cfg: RunConfig) -> bool:
    """Whether a proposed run can train fused: the MUNIT translator (CycleGAN's pool of past fakes
    lives in the module, which fused members share), no R1 penalty (a gradient inside the step,
    which vmap does not take), no semantic adversary (a fourth network and optimiser) and no
    torch.compile. The defaults and the paper's settings are all fusable."""
    return cfg.translator == "munit" and cfg.r1_gamma == 0 and cfg.w_semantic == 0 and not cfg.compile


def group_key(spec: "TrialSpec") -> tuple | None:
    """What a grid trial shares with the trials it may be fused with, or None for a trial that is
    trained alone. Fused: supervised segmentation trials (Table I, and M_A) of one task; the
    finetune / scratch runs of one task and target (every label fraction and repetition: their
    epochs are the same number of steps, engine.target_training), fine-tuning that replays the
    source images apart from runs on the target alone; the self-training runs of one
    task and target (their epochs differ by the pseudo-labels each keeps: a shorter member sits
    out the last steps); the proposed runs of one task and target (every fraction and repetition,
    engine.fused_proposed) where `proposed_fusable`. The warm-ups, source_only and the Fig. 9 runs
    run alone."""
    cfg = spec.config
    if spec.kind == SEGMENTATION:
        return (SEGMENTATION, cfg.task, *fuse_key(cfg))
    if spec.kind == TRANSFER and cfg.method in TRAINER_METHODS:
        kind = "self_training" if cfg.method == "self_training" else "target_labels"
        if cfg.method == "finetune" and cfg.source_replay:  # its epochs also pass over the source images
            kind = "target_labels_with_source"
        return (kind, cfg.task, cfg.target, *fuse_key(cfg.replace(epochs=spec.training_epochs)))
    if spec.kind == TRANSFER and cfg.method == "proposed" and proposed_fusable(cfg):
        return ("proposed", cfg.task, cfg.target, *proposed_fuse_key(cfg))
    return None


@dataclass
class Member:
    """One run of a fused group: what `train_supervised` would be called with, or (`trainer`
    given) how to build a run that trains as a `Trainer` does, e.g.
    engine.transfer.transfer_trainer for finetune, scratch and self-training."""

    cfg: RunConfig
    data: SegmentationData | None
    run_dir: Path
    callbacks: Sequence[EpochCallback] = field(default_factory=tuple)
    trainer: Callable[[], TrainingRun] | None = None
    step: type | None = None  # the fused step that trains it (None: FusedStep; the group's first member's counts)

    def start(self) -> TrainingRun:
        """The member's Trainer (or run of `step`'s kind), ready for `begin()`."""
        return self.trainer() if self.trainer is not None else Trainer(self.cfg, self.data, Path(self.run_dir))


class StackedAdam:
    """torch.optim.Adam (L2 weight decay, as the paper's Trainer) over tensors stacked by member.

    Adam is element-wise, so a stacked update is each member's own update. Step counts are kept
    per tensor and member, as torch keeps them per parameter: folds of different sizes take
    different numbers of steps, a step updates only the members that had a batch in it, and a
    tensor without a gradient in a step (a part of the network the step did not use, e.g. the
    style encoders in the proposed method's supervised step) is skipped, its count unchanged."""

    def __init__(self, params: dict[str, torch.Tensor], steps: dict[str, list[int]],
                 exp_avg: dict[str, torch.Tensor], exp_avg_sq: dict[str, torch.Tensor], lr: float,
                 betas: tuple[float, float], eps: float, weight_decay: float):
        self.params, self.exp_avg, self.exp_avg_sq = params, exp_avg, exp_avg_sq
        self.steps = {name: list(counts) for name, counts in steps.items()}
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay

    @torch.no_grad()
    def step(self, active: Sequence[int]) -> None:
        """One Adam step for the member rows in `active` (their gradients are in `.grad`)."""
        beta1, beta2 = self.betas
        device = next(iter(self.params.values())).device
        members = len(next(iter(self.steps.values())))
        mask = torch.zeros(members, dtype=torch.bool)
        mask[list(active)] = True
        mask = mask.to(device)
        factors: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # one copy per set of counts
        for name, param in self.params.items():
            grad = param.grad
            if grad is None:
                continue
            for row in active:
                self.steps[name][row] += 1
            counts = tuple(max(step, 1) for step in self.steps[name])
            if counts not in factors:
                # The bias corrections as torch's single-tensor Adam computes them (in double precision).
                neg_step_size = torch.tensor([-(self.lr / (1 - beta1 ** n)) for n in counts], dtype=torch.float32)
                bias2_sqrt = torch.tensor([(1 - beta2 ** n) ** 0.5 for n in counts], dtype=torch.float32)
                factors[counts] = (neg_step_size.to(device), bias2_sqrt.to(device))
            neg_step_size, bias2_sqrt = factors[counts]
            shape = (members,) + (1,) * (param.dim() - 1)
            keep = mask.view(shape)
            grad = grad.add(param, alpha=self.weight_decay) if self.weight_decay else grad
            exp_avg = self.exp_avg[name].lerp(grad, 1 - beta1)
            exp_avg_sq = self.exp_avg_sq[name].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias2_sqrt.view(shape)).add_(self.eps)
            # torch's CPU addcdiv_(exp_avg, denom, value=-step_size) rounds (value * exp_avg) / denom
            # in that order: the same order here keeps a CPU member's update bit for bit its own run's.
            updated = param + (neg_step_size.view(shape) * exp_avg) / denom
            self.exp_avg[name].copy_(torch.where(keep, exp_avg, self.exp_avg[name]))
            self.exp_avg_sq[name].copy_(torch.where(keep, exp_avg_sq, self.exp_avg_sq[name]))
            param.copy_(torch.where(keep, updated, param))


def _optimizer_settings(optimizer: torch.optim.Optimizer, where: Path) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) > 1:
        raise ValueError(f"{where}: fused training implements one parameter group per optimiser")
    if group.get("amsgrad") or group.get("maximize") or group.get("decoupled_weight_decay"):
        raise ValueError(f"{where}: fused training implements plain Adam only")
    return {"lr": group["lr"], "betas": tuple(group["betas"]), "eps": group["eps"],
            "weight_decay": group["weight_decay"]}


def stack_adam(optimizers: Sequence[torch.optim.Optimizer], modules: Sequence[torch.nn.Module],
               params: dict[str, torch.Tensor], where: Sequence[Path]) -> StackedAdam:
    """One StackedAdam over the members' `optimizers` (the same settings, each over the same
    parameters of its member's module), on the rows of the stacked `params` (named as in the
    modules' named_parameters), its moments and step counts where each optimiser left them."""
    settings = [_optimizer_settings(optimizer, path) for optimizer, path in zip(optimizers, where)]
    if any(s != settings[0] for s in settings):
        raise ValueError("fused members must share the optimiser's settings")
    trained = {id(p) for p in optimizers[0].param_groups[0]["params"]}
    names = [name for name, p in modules[0].named_parameters() if id(p) in trained]
    steps: dict[str, list[int]] = {name: [] for name in names}
    moments: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    squares: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for optimizer, module in zip(optimizers, modules):
        named = dict(module.named_parameters())
        for name in names:
            param = named[name]
            state = optimizer.state.get(param, {})
            steps[name].append(int(state["step"]) if "step" in state else 0)
            moments[name].append(state["exp_avg"] if "exp_avg" in state else torch.zeros_like(param))
            squares[name].append(state["exp_avg_sq"] if "exp_avg_sq" in state else torch.zeros_like(param))
    return StackedAdam({name: params[name] for name in names}, steps,
                       {name: torch.stack(moments[name]).contiguous() for name in names},
                       {name: torch.stack(squares[name]).contiguous() for name in names}, **settings[0])


@torch.no_grad()
def unstack_adam(stacked: StackedAdam, optimizers: Sequence[torch.optim.Optimizer],
                 modules: Sequence[torch.nn.Module]) -> None:
    """Each member's rows of `stacked` back into its own parameters and optimiser state (a tensor
    a member has never stepped keeps no state, as in its own optimiser)."""
    for row, (optimizer, module) in enumerate(zip(optimizers, modules)):
        named = dict(module.named_parameters())
        on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
        for name, rows in stacked.params.items():
            param = named[name]
            param.copy_(rows[row])
            if stacked.steps[name][row] == 0:
                continue
            state = optimizer.state[param]
            state["step"] = torch.tensor(float(stacked.steps[name][row]), dtype=torch.float32,
                                         device=param.device if on_device else "cpu")
            # In the parameter's own layout (channels-last on CUDA): torch's fused Adam requires it.
            state["exp_avg"] = torch.empty_like(param).copy_(stacked.exp_avg[name][row])
            state["exp_avg_sq"] = torch.empty_like(param).copy_(stacked.exp_avg_sq[name][row])


class _MemberDropout:
    """Dropout drawn from each member's own random stream, as its separate run draws it.

    Under vmap, `nn.Dropout` would draw every member's mask from one stream, so a member's result
    would depend on its siblings. Here the network's dropout layers are switched off in the
    shared copy and a forward hook multiplies their output by the member's own mask (a vmapped
    input, or set before each member's forward in turn on the CPU). Each mask is drawn before the
    call from the member's own generator, in the order the layers run, the way the CPU's dropout
    draws it (`empty_like(x).bernoulli_(1 - p)`, then `/ (1 - p)`): on the CPU a fused member is
    bit-exact with its separate run."""

    def __init__(self, base: torch.nn.Module):
        self.layers = {name: m for name, m in base.named_modules() if isinstance(m, torch.nn.Dropout)}
        self.shapes: dict[tuple, list[tuple[str, tuple]]] = {}
        self.order: list[tuple[str, tuple]] = []
        self.current: dict[str, torch.Tensor] | None = None
        for name, layer in self.layers.items():
            layer.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def apply(module, inputs, output):
            if self.current is None:  # probing shapes, or validation
                self.order.append((name, tuple(inputs[0].shape)))
                return output
            return output * self.current[name]
        return apply

    def _shapes(self, base: torch.nn.Module, params: dict, buffers: dict, image_shape: tuple) -> list:
        """(layer, input shape) of each dropout layer, in the order they run, for one member's batch."""
        if image_shape not in self.shapes:
            self.order = []
            meta = {name: torch.empty(t.shape[1:], dtype=t.dtype, device="meta") for name, t in params.items()}
            meta_buffers = {name: torch.empty(t.shape[1:], dtype=t.dtype, device="meta") for name, t in buffers.items()}
            with torch.no_grad():
                functional_call(base, (meta, meta_buffers), (torch.empty(image_shape, device="meta"),))
            self.shapes[image_shape] = self.order
        return self.shapes[image_shape]

    def masks(self, base, params, buffers, image_shape: tuple, generators: list[torch.Generator],
              device: torch.device) -> dict[str, torch.Tensor]:
        """Per dropout layer, the members' masks stacked ([members, *shape])."""
        drawn: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        for generator in generators:
            for name, shape in self._shapes(base, params, buffers, image_shape):
                keep = 1 - self.layers[name].p
                drawn[name].append(torch.empty(shape).bernoulli_(keep, generator=generator).div_(keep))
        return {name: torch.stack(masks).to(device) for name, masks in drawn.items()}


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
        self.dropout = _MemberDropout(self.base) if any(
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
        results: list[dict[str, Any] | BaseException] = []
        for row, t in enumerate(self.trainers):
            outcome = self.outcome[row]
            if outcome is not None:
                results.append(outcome)
                continue
            loss = float(self.totals[row]) / len(t.train_images)
            try:
                t.trained_epoch()
                check_finite_loss(t, loss)
            except Exception as exc:
                results.append(exc)
                continue
            results.append({"train_loss": loss, "train_s": train_s, "fused_members": len(self.trainers),
                            "train_images_per_s": len(t.data.train_images) / max(train_s, 1e-9)})
        return results

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
    engine.fused_proposed.FusedProposedStep) over the live members' stacked state trains them all;
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
                     getattr(run, "device", "?"), member.run_dir)
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
