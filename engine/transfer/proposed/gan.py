"""The adversarial game of the unpaired translator: its discriminative and generative steps and
their optimisers (`TranslationTrainer`), the optional semantic adversary, the epoch's unpaired
index batches, and the check that its losses stay finite.

Freezing is done here, and only here, by switching `requires_grad`: a "freeze" that merely
skips an optimiser step still lets gradients (and their cost) flow, and the authors' follow-up
code had exactly that bug.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from engine.loop import TrainingDiverged
from engine.runtime.device import adam as adam_for
from engine.runtime.device import (
    autocast_for,
    grad_scaler_for,
    load_scaler_state,
)
from models.registry import build_translator
from models.translators.base import Translator
from protocol.config import translator_arguments

if TYPE_CHECKING:
    from protocol.config import RunConfig


def build_translator_from_config(cfg: "RunConfig") -> Translator:
    return build_translator(cfg.translator, **translator_arguments(cfg))


def set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(trainable)


def check_finite(losses: dict[str, float], where: str) -> None:
    """Raise TrainingDiverged naming the terms that are NaN or infinite (an epoch's mean losses)."""
    bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
    if bad:
        terms = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise TrainingDiverged(f"{where}: loss is not finite ({terms}); lower gan_lr / lr or check the input data")


class LossSums:
    """Each loss term summed over an epoch on the device: one host sync per epoch (`means`),
    not one per term and step."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.steps = 0

    def add(self, record: dict[str, Tensor]) -> None:
        for name, value in record.items():
            value = value.detach().to(torch.float64)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        totals = torch.stack(list(self.sums.values())).cpu().tolist()
        return {name: total / self.steps for name, total in zip(self.sums, totals)}


class TranslationTrainer:
    """One translator with its two optimisers; the generator optimiser is shared with the
    supervised step of the proposed method, which also updates the generators. Steps run under
    the device's mixed precision (engine.runtime.device.autocast_for) and return their loss
    terms as tensors on the device, so that a step never waits for the GPU."""

    def __init__(self, translator: Translator, cfg: "RunConfig"):
        self.translator = translator
        self.device = next(translator.parameters()).device
        self.generator_optimizer = gan_adam(translator.generator_parameters(), self.device, cfg)
        self.discriminator_optimizer = gan_adam(translator.discriminator_parameters(), self.device, cfg,
                                                discriminator=True)
        # One loss scaler per step (float16 only): the generator optimiser is stepped twice per batch.
        self.generator_scaler = grad_scaler_for(self.device)
        self.discriminator_scaler = grad_scaler_for(self.device)

    def discriminative_step(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Generators frozen, both discriminators trained."""
        t = self.translator
        losses = adversarial_step(self.device, t.discriminator_modules(), t.generator_modules(),
                                  self.discriminator_optimizer, self.discriminator_scaler,
                                  lambda: t.discriminator_losses(a, b))
        return {f"D_{name}": value for name, value in losses.items()}

    def generative_step(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Discriminators frozen, both generators trained on adversarial and reconstruction terms."""
        t = self.translator
        losses = adversarial_step(self.device, t.generator_modules(), t.discriminator_modules(),
                                  self.generator_optimizer, self.generator_scaler, lambda: t.generator_losses(a, b))
        return {f"G_{name}": value for name, value in losses.items()}

    def state_dict(self) -> dict:
        return {"generator_optimizer": self.generator_optimizer.state_dict(),
                "discriminator_optimizer": self.discriminator_optimizer.state_dict(),
                "generator_scaler": self.generator_scaler.state_dict(),
                "discriminator_scaler": self.discriminator_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        load_scaler_state(self.generator_scaler, state.get("generator_scaler"))
        load_scaler_state(self.discriminator_scaler, state.get("discriminator_scaler"))


def gan_adam(parameters, device: torch.device, cfg: "RunConfig", discriminator: bool = False) -> torch.optim.Optimizer:
    """The adversarial game's Adam (gan_lr, gan_beta1/2, gan_weight_decay). Two time scales
    (Heusel et al., 2017): a discriminator may learn at `d_lr_ratio` times the generators' rate."""
    lr = cfg.gan_lr * (cfg.d_lr_ratio if discriminator else 1.0)
    return adam_for(parameters, device, lr=lr, betas=(cfg.gan_beta1, cfg.gan_beta2), weight_decay=cfg.gan_weight_decay)


def adversarial_step(device: torch.device, trained, frozen, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler,
                     compute_losses: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """One step of one side of an adversarial game under the device's mixed precision: `frozen`
    frozen before the forward pass (it builds no graph and gets no gradient), `trained` trained
    on `compute_losses()["total"]`. Returns the detached loss terms."""
    set_trainable(frozen, False)
    set_trainable(trained, True)
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device):
        losses = compute_losses()
    scaler.scale(losses["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


class SemanticAdversary:
    """The optional semantic-aware adversarial term (SeUDA, Chen et al., 2018), `w_semantic` > 0:
    a mask discriminator D_M learns to tell source label masks from M_A's predictions on G_BA(b),
    and G_BA is trained to make those predictions look like real lung masks. As in SeUDA the
    segmenter is frozen for this term (it cannot satisfy D_M by ignoring its input); only the
    generators move. Transfer phase only: the warm-up has no segmenter. Like TranslationTrainer,
    steps run under the device's mixed precision and return their losses as tensors."""

    def __init__(self, cfg: "RunConfig", device: torch.device):
        from models.translators.semantic import MaskDiscriminator

        self.weight, self.device = cfg.w_semantic, device
        self.discriminator = MaskDiscriminator(cfg.translator_width, cfg.spectral_norm).to(device)
        self.optimizer = gan_adam(self.discriminator.parameters(), device, cfg, discriminator=True)
        self.discriminator_scaler, self.generator_scaler = grad_scaler_for(device), grad_scaler_for(device)

    @staticmethod
    def _foreground(segmenter: nn.Module, images: Tensor) -> Tensor:
        return torch.softmax(segmenter(images).float(), dim=1)[:, 1:2]

    def step(self, translator: Translator, segmenter: nn.Module, generator_optimizer: torch.optim.Optimizer,
             b: Tensor, source_masks: Tensor) -> dict[str, Tensor]:
        from models.translators.losses import lsgan_discriminator_loss, lsgan_generator_loss

        was_training = segmenter.training
        segmenter.eval()  # frozen: no batch-norm statistics from translated target images either

        def discriminator_loss() -> dict[str, Tensor]:
            with torch.no_grad():
                predicted = self._foreground(segmenter, translator.translate_ba(b))
            real = source_masks[:, None].to(predicted.dtype)
            return {"total": self.weight * lsgan_discriminator_loss(self.discriminator(real),
                                                                    self.discriminator(predicted))}

        def generator_loss() -> dict[str, Tensor]:
            return {"total": self.weight * lsgan_generator_loss(
                self.discriminator(self._foreground(segmenter, translator.translate_ba(b))))}

        d_loss = adversarial_step(self.device, [self.discriminator], [segmenter, *translator.generator_modules()],
                                  self.optimizer, self.discriminator_scaler, discriminator_loss)["total"]
        # The segmenter stays frozen: only the generators move.
        g_loss = adversarial_step(self.device, translator.generator_modules(), [self.discriminator],
                                  generator_optimizer, self.generator_scaler, generator_loss)["total"]
        set_trainable([segmenter], True)
        segmenter.train(was_training)
        return {"SEM_d": d_loss, "SEM_g": g_loss}

    def state_dict(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "discriminator_scaler": self.discriminator_scaler.state_dict(),
                "generator_scaler": self.generator_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        load_scaler_state(self.discriminator_scaler, state.get("discriminator_scaler"))
        load_scaler_state(self.generator_scaler, state.get("generator_scaler"))


def paired_batches(n_a: int, n_b: int, batch_size: int,
                   rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of unpaired (A, B) index batches: a pass over the larger set, the smaller one cycled."""
    steps = math.ceil(max(n_a, n_b) / batch_size)
    order_a = np.concatenate([rng.permutation(n_a) for _ in range(math.ceil(steps * batch_size / n_a))])
    order_b = np.concatenate([rng.permutation(n_b) for _ in range(math.ceil(steps * batch_size / n_b))])
    for step in range(steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        yield order_a[window], order_b[window]


def device_batches(batches: Iterable[tuple[np.ndarray, ...]], device: torch.device) -> list[tuple[Tensor, ...]]:
    """An epoch's index batches (drawn as before, all at once) moved to the device in one copy."""
    drawn = list(batches)
    if not drawn:
        return []
    stacked = [torch.from_numpy(np.stack(column)).to(device) for column in zip(*drawn)]
    return list(zip(*(column.unbind(0) for column in stacked)))
