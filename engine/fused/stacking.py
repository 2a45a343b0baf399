"""The machinery every fused group shares: K members' Adam states stacked along a member axis
(`StackedAdam`, exact per member), dropout drawn from each member's own stream, and whether a
device runs the members as one vmapped computation (`grouped_on`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch.func import functional_call

if TYPE_CHECKING:
    pass


def grouped_on(device: torch.device) -> bool:
    """Whether a fused step runs its members' networks as one vmapped computation (grouped
    kernels: a GPU, where K small networks otherwise leave the device idle) or member by member on
    their rows of the stacked state (the CPU: grouped convolutions are no faster there, and each
    member's arithmetic is then its separate run's, bit for bit; benchmarks/bench_fused.py)."""
    return device.type != "cpu"


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


class MemberDropout:
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


def member_outcomes(failed: Sequence[BaseException | None],
                    metrics: Callable[[int], dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
    """Per member of a fused epoch its metrics (`metrics(row)`), or the exception that failed it:
    during the epoch (`failed[row]`) or in `metrics` (e.g. a loss that is not finite). A member
    fails alone; its siblings' results stand."""
    results: list[dict[str, Any] | BaseException] = []
    for row, failure in enumerate(failed):
        if failure is not None:
            results.append(failure)
            continue
        try:
            results.append(metrics(row))
        except Exception as exc:
            results.append(exc)
    return results
