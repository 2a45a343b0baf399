"""Several runs of the proposed method trained as one computation on one device.

The proposed method is the grid's largest kind of trial (docs/performance.md, "Fused trials"), and its
repetitions and label fractions of one target are the same networks (M_A's U-Net and the
MUNIT translator) with the same hyper-parameters on different images, labels and warm-ups:
engine.fused's horizontal fusion applies. Each of the method's three steps (discriminative,
generative, supervised) runs once for all members over their stacked parameters and buffers,
and three stacked Adams (discriminators, generators, segmenter) update them, each member from
its own moments and step counts.

Each member stays its own engine.transfer.proposed.run.ProposedRun: its index batches, random stream,
augmentation, label plan, validation, epoch selection, checkpoints and resume are its run's; only
the steps are shared. What a run alone freezes with `set_trainable` enters a fused step detached
(no gradient either way). Spectral normalisation's power iteration updates each member's vectors
in place, as in its run alone.

As in engine.fused, two ways to run a step (`engine.fused.stacking.grouped_on`): on a GPU one vmapped
computation for all members, whose random styles vmap draws per member (not the draws of a run
alone, and sums run in another order); on the CPU member by member on its rows of the stacked
state with its own random stream in place, and a fused member is then its run alone bit for bit
(tests/engine/fused/test_fused_proposed.py checks both ways).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.func import functional_call, stack_module_state, vmap

from engine.loop import train_one_epoch
from engine.runtime.device import autocast_for
from protocol.config import RunConfig, translator_arguments

if TYPE_CHECKING:
    pass
import hashlib
import types
from functools import partial

from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import _SpectralNorm

from engine.fused.stacking import grouped_on, member_outcomes, stack_adam, unstack_adam
from engine.transfer.proposed.gan import LossSums
from engine.transfer.proposed.run import STEP_CLOCKS, ProposedRun, StepClock

# What proposed-method runs (engine.fused.proposed) must share besides: M_A's optimiser and the
# transfer epochs, the translator (its arguments are its losses' weights) and the game's optimisers.
PROPOSED_FUSE_FIELDS = ("model", "width", "image_size", "batch_size", "transfer_epochs", "lr", "weight_decay",
                        "beta1", "beta2", "device", "translator", "gan_lr", "gan_beta1", "gan_beta2",
                        "gan_weight_decay", "d_lr_ratio", "loss")


def proposed_fuse_key(cfg: RunConfig) -> tuple:
    return (*(getattr(cfg, name) for name in PROPOSED_FUSE_FIELDS), *sorted(translator_arguments(cfg).items()))


def proposed_fusable(cfg: RunConfig) -> bool:
    """Whether a proposed run can train fused: the MUNIT translator (CycleGAN's pool of past fakes
    lives in the module, which fused members share), no R1 penalty (a gradient inside the step,
    which vmap does not take), no semantic adversary (a fourth network and optimiser) and no
    torch.compile. The defaults and the paper's settings are all fusable."""
    return cfg.translator == "munit" and cfg.r1_gamma == 0 and cfg.w_semantic == 0 and not cfg.compile


class _Steps(nn.Module):
    """The computations of the three steps as one module's forward, so that functional_call runs
    them on a member's rows (parameter names as TranslateThenSegment's: "segmenter.", "translator.")."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.segmenter, self.translator = model.segmenter, model.translator

    def forward(self, step: str, a: Tensor, b: Tensor | None = None):
        translator = self.translator
        if step == "D":
            return translator.discriminator_losses(a, b)
        if step == "G":
            return translator.generator_losses(a, b)
        source = self.segmenter(translator.cycle_aba(a))  # the supervised step: M_A on A -> B -> A
        return source if b is None else (source, self.segmenter(translator.translate_ba(b)))


@torch.no_grad()
def _power_method_in_place(self: _SpectralNorm, weight_mat: Tensor, n_power_iterations: int) -> None:
    """torch's spectral-norm power iteration with `copy_` for its `out=` (which vmap cannot batch):
    the same values, written into the member's vectors in place."""
    for _ in range(n_power_iterations):
        self._u.copy_(F.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps))
        self._v.copy_(F.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps))


class FusedProposedStep:
    """The live members of one fused epoch of the proposed method (engine.fused.supervised.train_fused's
    `step` for groups of ProposedRuns): their stacked state, and the epoch's training."""

    FIELDS = PROPOSED_FUSE_FIELDS + ("translator arguments", "networks (shapes, the warmed translator's arguments)")

    @staticmethod
    def shape(run: ProposedRun) -> tuple:
        """What a member shares with its group: the config's part (proposed_fuse_key) and, as a
        digest, its networks' tensor shapes and the arguments its warmed translator was built with
        (the fused step computes with the first member's translator). A member that differs fails
        to start, alone."""
        if not proposed_fusable(run.cfg):
            raise ValueError(f"{run.run_dir}: this proposed run cannot train fused "
                             "(engine.fused.proposed.proposed_fusable): run it with --fuse 1")
        if run.scaler.is_enabled():
            raise ValueError(f"{run.run_dir}: fused training needs bfloat16 or float32 arithmetic; this device trains "
                             "in float16 with loss scaling (run these trials unfused: --fuse 1)")
        networks = sorted((name, tuple(t.shape)) for name, t in run.model.state_dict().items())
        built = sorted(run.translator_payload.get("kwargs", {}).items())
        digest = hashlib.sha256(repr((networks, built)).encode()).hexdigest()[:12]
        return (*proposed_fuse_key(run.cfg), f"networks {digest}")

    def __init__(self, runs: Sequence[ProposedRun], rng_states: Sequence[Tensor], grouped: bool | None = None):
        self.runs = list(runs)
        first = self.runs[0]
        self.device = first.device
        self.grouped = grouped_on(self.device) if grouped is None else grouped
        self.models = [run.model for run in self.runs]
        for model in self.models:
            model.train()
        self.params, self.buffers = stack_module_state(self.models)
        where = [run.run_dir for run in self.runs]
        self.optimizers = {kind: stack_adam(optimizers, self.models, self.params, where)
                           for kind, optimizers in _optimizers(self.runs).items()}
        # What each step trains; the rest enters it detached. The supervised step moves M_A and
        # both generators (the generators' Adam is stepped twice per batch, as in a run alone).
        self.stepped = {"D": ("D",), "G": ("G",), "S": ("G", "S")}
        self.trained = {step: {name for kind in kinds for name in self.optimizers[kind].params}
                        for step, kinds in self.stepped.items()}
        self.base = _Steps(copy.deepcopy(first.model).to("meta")).train()
        for module in self.base.modules():
            if isinstance(module, _SpectralNorm):
                module._power_method = types.MethodType(_power_method_in_place, module)
        self.rng = list(rng_states)

    @property
    def rng_states(self) -> list[Tensor]:
        return list(self.rng)

    # --- one step of every member in `rows` ---
    def _call(self, step: str, params: dict, buffers: dict, a: Tensor, b: Tensor | None):
        return functional_call(self.base, (params, buffers), (step, a, b))

    def _run(self, step: str, rows: list[int], a: Tensor, b: Tensor | None) -> Any:
        """`step`'s computation for the members of `rows` on their own batches ([members, batch, ...]):
        its outputs stacked by member."""
        trained = self.trained[step]
        if not self.grouped:
            params = {name: p.unbind(0) for name, p in self.params.items()}
            buffers = {name: t.unbind(0) for name, t in self.buffers.items()}
            outputs = []
            for j, row in enumerate(rows):
                torch.set_rng_state(self.rng[row])  # the member's own random styles and noise
                member = {name: p[row] if name in trained else p[row].detach() for name, p in params.items()}
                with autocast_for(self.device):
                    outputs.append(self._call(step, member, {name: t[row] for name, t in buffers.items()}, a[j],
                                              None if b is None else b[j]))
                self.rng[row] = torch.get_rng_state()
            return _stack(outputs)
        every = rows == list(range(len(self.runs)))
        params, buffers = self.params, self.buffers
        if not every:  # some members have ended their epoch: the others' rows, copied
            index = torch.tensor(rows, device=self.device)
            params = {name: p.index_select(0, index) for name, p in params.items()}
            buffers = {name: t.index_select(0, index) for name, t in buffers.items()}
        params = {name: p if name in trained else p.detach() for name, p in params.items()}
        with autocast_for(self.device):
            out = vmap(partial(self._call, step), in_dims=(0, 0, 0, None if b is None else 0),
                       randomness="different")(params, buffers, a, b)
        if not every:
            with torch.no_grad():  # batch-norm statistics and power-iteration vectors the subset updated in its copies
                for name, t in buffers.items():
                    self.buffers[name][index] = t
        return out

    def _update(self, step: str, rows: list[int], totals: Tensor) -> None:
        """Back-propagate the members' totals (their graphs are apart: each gets its own gradient)
        and step the step's optimisers for them."""
        totals.sum().backward()
        for kind in self.stepped[step]:
            self.optimizers[kind].step(rows)
        for p in self.params.values():
            p.grad = None

    def _supervised(self, rows: list[int], batches: dict[int, tuple]) -> dict[int, dict[str, Tensor]]:
        """The supervised step: members with target labels and members without run as two groups."""
        losses: dict[int, dict[str, Tensor]] = {}
        totals = []
        for labelled in (False, True):
            group = [row for row in rows if (batches[row][2] is not None) == labelled]
            if not group:
                continue
            a = torch.stack([batches[row][0] for row in group])
            b = torch.stack([batches[row][2] for row in group]) if labelled else None
            out = self._run("S", group, a, b)
            for j, row in enumerate(group):
                run, masks = self.runs[row], batches[row]
                with autocast_for(self.device):
                    terms = {"S_source": run.loss_fn((out[0] if labelled else out)[j], masks[1])}
                    if labelled:
                        terms["S_target"] = run.loss_fn(out[1][j], masks[3])
                    totals.append(run.cfg.w_seg * sum(terms.values()))
                losses[row] = {name: value.detach() for name, value in terms.items()}
        self._update("S", rows, torch.stack(totals))
        return losses

    # --- one epoch of every member, batch by batch (engine.loop.EpochSteps) ---
    def epoch_batches(self) -> range:
        """Each member's epoch draws, as its run alone makes them; the steps of the longest
        member's epoch (a shorter member sits out the last ones)."""
        self.outcome: list[dict[str, Any] | BaseException | None] = [None] * len(self.runs)
        self.plans = []
        for row, run in enumerate(self.runs):
            run.model.train()
            self.plans.append(run.epoch_draws())  # seeds the global stream: the member's epoch starts from it
            self.rng[row] = torch.get_rng_state()
        self.sums = [LossSums() for _ in self.runs]
        self.clock = StepClock(self.device, STEP_CLOCKS)
        return range(max(len(batches) for batches, _ in self.plans))

    def training_step(self, step: int) -> None:
        """The three steps of every member with a batch at `step`."""
        outcome, plans, clock = self.outcome, self.plans, self.clock
        rows = [row for row, (batches, _) in enumerate(plans) if outcome[row] is None and step < len(batches)]
        rows, inputs = _per_member(rows, outcome, lambda row: self.runs[row].batch(*plans[row][0][step]))
        if not rows:
            return
        a = torch.stack([inputs[row][0] for row in rows])
        b = torch.stack([inputs[row][2] for row in rows])
        start = clock.now()
        records: dict[int, dict[str, Tensor]] = {row: {} for row in rows}
        for kind in ("D", "G"):
            losses = self._run(kind, rows, a, b)
            self._update(kind, rows, losses["total"])
            for j, row in enumerate(rows):
                records[row].update({f"{kind}_{name}": value[j].detach() for name, value in losses.items()})
            ended = clock.now()
            clock.add(f"{kind}_s", start, ended)
            start = ended
        # (source images, masks, labelled target images, masks), augmented by each member's recipe
        rows, augmented = _per_member(rows, outcome, lambda row: self.runs[row].augmented(
            *inputs[row][:2], *inputs[row][3:], plans[row][1]))
        if rows:
            for row, losses in self._supervised(rows, augmented).items():
                records[row].update(losses)
        clock.add("S_s", start, clock.now())
        for row in rows:
            self.sums[row].add(records[row])

    def epoch_end(self, started: float) -> list[dict[str, Any] | BaseException]:
        """Per member its epoch's metrics, or the exception that failed it."""
        self._unstack()
        seconds = self.clock.seconds()
        return member_outcomes(self.outcome, lambda row: {
            **self.runs[row].trained_epoch(self.runs[row].epoch_losses_of(self.sums[row], seconds)),
            "fused_members": len(self.runs)})

    def train_epoch(self) -> list[dict[str, Any] | BaseException]:
        """One epoch of every member (each from its own epoch count)."""
        return train_one_epoch(self)

    @torch.no_grad()
    def _unstack(self) -> None:
        """Each member's weights, buffers and the three Adams' states back into its own run."""
        optimizers = _optimizers(self.runs)
        for kind, stacked in self.optimizers.items():
            unstack_adam(stacked, optimizers[kind], self.models)
        for row, model in enumerate(self.models):
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name][row])


def _per_member(rows: list[int], outcome: list, compute: Callable[[int], Any]) -> tuple[list[int], dict[int, Any]]:
    """`compute(row)` for each member in `rows`; a member whose call raises (its data, its
    augmentation) fails alone, its outcome the exception. The members left, and their results."""
    done: dict[int, Any] = {}
    for row in rows:
        try:
            done[row] = compute(row)
        except Exception as exc:
            outcome[row] = exc
    return [row for row in rows if row in done], done


def _optimizers(runs: Sequence[ProposedRun]) -> dict[str, list[torch.optim.Optimizer]]:
    """The members' three Adams: D (both discriminators), G (both generators), S (M_A)."""
    return {"D": [run.translation.discriminator_optimizer for run in runs],
            "G": [run.translation.generator_optimizer for run in runs],
            "S": [run.segmenter_optimizer for run in runs]}


def _stack(outputs: list) -> Any:
    """Per-member outputs (tensors, tuples or dicts of them) stacked along a member axis."""
    first = outputs[0]
    if isinstance(first, dict):
        return {name: torch.stack([out[name] for out in outputs]) for name in first}
    if isinstance(first, tuple):
        return tuple(torch.stack(parts) for parts in zip(*outputs))
    return torch.stack(outputs)
