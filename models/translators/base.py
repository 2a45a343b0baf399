"""What every translator offers the transfer engine.

A translator owns both generators (A -> B and B -> A) and both discriminators (D_A, D_B), and
knows its own objectives. The engine only decides *which* parameters are trainable in each of
the three steps (discriminative, generative, supervised); the translator never freezes anything
itself, so a test can check freezing in one place.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.translators.losses import lsgan_discriminator_loss

# Adversarial terms each side sums (one per discriminator): G_adv of the generative step is
# at most about N_ADVERSARIAL_TERMS * w_adv against discriminators that win every time.
N_ADVERSARIAL_TERMS = 2


def with_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al., 2018) of every convolution and linear layer: the
    discriminator stays 1-Lipschitz per layer, so it cannot sharpen into a perfect classifier
    whose scores no longer tell the generator which way to move."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, _spectral_norm(child))
        else:
            with_spectral_norm(child)
    return module


def zero_output_layer(conv: nn.Conv2d) -> None:
    """A residual generator whose last layer starts at zero is the identity at initialisation
    (as in Fixup / zero-init residual branches): the translation starts from "change nothing"
    and moves only as far as the adversarial term asks."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class Translator(nn.Module):
    """Unpaired two-way image translator. Images are [B, 1, H, W], standardised intensities."""

    def generator_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def discriminator_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.generator_modules():
            yield from module.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.discriminator_modules():
            yield from module.parameters()

    def translate_ab(self, a: Tensor) -> Tensor:
        """G_AB: a source image rendered in the target's appearance."""
        raise NotImplementedError

    def translate_ba(self, b: Tensor) -> Tensor:
        """G_BA: a target image rendered in the source's appearance (what M_A reads)."""
        raise NotImplementedError

    def cycle_aba(self, a: Tensor) -> Tensor:
        """A -> B -> A, the path the supervised step sends source images through."""
        return self.translate_ba(self.translate_ab(a))

    def training_state(self) -> dict:
        """State outside the parameters that training draws on (e.g. CycleGAN's pool of past
        fakes and its random generator): saved in a run's last.pt so resuming is exact."""
        return {}

    def load_training_state(self, state: dict) -> None:
        """Restore what `training_state` returned."""

    def generator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weighted terms of the generative step; key "total" is what is back-propagated."""
        raise NotImplementedError

    def discriminator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        """Weighted terms of the discriminative step; key "total" is what is back-propagated."""
        raise NotImplementedError

    def regularise_discriminators(self, *, spectral_norm: bool, r1_gamma: float, instance_noise: float) -> None:
        """Called once by a translator's constructor, after it built `dis_a` and `dis_b`."""
        if spectral_norm:
            with_spectral_norm(self.dis_a)
            with_spectral_norm(self.dis_b)
        self.r1_gamma, self.instance_noise = float(r1_gamma), float(instance_noise)

    def lsgan_discriminator_terms(self, a: Tensor, b: Tensor, b_as_a: Tensor, a_as_b: Tensor) -> dict[str, Tensor]:
        """D_A tells real A from B translated to A, D_B real B from A translated to B (LSGAN).
        Needs `dis_a`, `dis_b`, an adversarial weight `weights["adv"]`, and the regularisers
        `instance_noise` (std of Gaussian noise added to every discriminator input while
        training; Sønderby et al., 2017) and `r1_gamma` (zero-centred gradient penalty on real
        inputs, gamma/2 E|grad D(x)|^2; Mescheder et al., 2018), 0 to switch either off."""
        noisy = self._instance_noise
        real_a, real_b = noisy(a), noisy(b)
        if self.r1_gamma > 0:
            real_a, real_b = real_a.detach().requires_grad_(True), real_b.detach().requires_grad_(True)
        score_a, score_b = self.dis_a(real_a), self.dis_b(real_b)
        terms = {
            "d_a": self.weights["adv"] * lsgan_discriminator_loss(score_a, self.dis_a(noisy(b_as_a))),
            "d_b": self.weights["adv"] * lsgan_discriminator_loss(score_b, self.dis_b(noisy(a_as_b))),
        }
        if self.r1_gamma > 0:
            terms["r1"] = self.r1_gamma / 2 * (r1_penalty(score_a, real_a) + r1_penalty(score_b, real_b))
        terms["total"] = sum(terms.values())
        return terms

    def _instance_noise(self, images: Tensor) -> Tensor:
        if self.instance_noise > 0 and self.training:
            return images + self.instance_noise * torch.randn_like(images)
        return images


def r1_penalty(scores: Tensor, inputs: Tensor) -> Tensor:
    """E |d score / d input|^2 over the batch, differentiable (the discriminator step backpropagates it)."""
    (gradient,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()
