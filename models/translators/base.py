"""What every translator offers the transfer engine.

A translator owns both generators (A -> B and B -> A) and both discriminators (D_A, D_B), and
knows its own objectives. The engine only decides *which* parameters are trainable in each of
the three steps (discriminative, generative, supervised); the translator never freezes anything
itself, so a test can check freezing in one place.
"""
from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from models.translators.losses import lsgan_discriminator_loss


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

    def lsgan_discriminator_terms(self, a: Tensor, b: Tensor, b_as_a: Tensor, a_as_b: Tensor) -> dict[str, Tensor]:
        """D_A tells real A from B translated to A, D_B real B from A translated to B (LSGAN).
        Needs `dis_a`, `dis_b` and an adversarial weight `weights["adv"]`."""
        terms = {
            "d_a": self.weights["adv"] * lsgan_discriminator_loss(self.dis_a(a), self.dis_a(b_as_a)),
            "d_b": self.weights["adv"] * lsgan_discriminator_loss(self.dis_b(b), self.dis_b(a_as_b)),
        }
        terms["total"] = terms["d_a"] + terms["d_b"]
        return terms
