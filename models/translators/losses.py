"""Loss terms shared by the translators: LSGAN objectives and L1 reconstruction."""
from __future__ import annotations

import torch
from torch import Tensor


def lsgan_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """Least-squares GAN: real pushed to 1, fake to 0 (Mao et al., 2017)."""
    return 0.5 * (torch.mean((real_scores - 1.0) ** 2) + torch.mean(fake_scores**2))


def lsgan_generator_loss(fake_scores: Tensor) -> Tensor:
    return torch.mean((fake_scores - 1.0) ** 2)


def l1(prediction: Tensor, target: Tensor) -> Tensor:
    return torch.mean(torch.abs(prediction - target))
