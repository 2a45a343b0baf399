"""Segmentation losses selected by `RunConfig.loss`.

"ce" is the paper's cross-entropy. "weighted_ce" and "ce_dice" are options for very
unbalanced structures (clavicles are 1-2 % of the pixels); they are only used when a config
names them, so the recorded config always says which loss produced a number.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from models.loss_names import LOSSES

# A target pixel of this value carries no label and adds nothing to any loss: self-training marks
# the pixels its teacher is unsure of so (engine/transfer/self_training.py). Masks are stored as uint8, so
# the value must fit one; a mask warped by the augmentation keeps it (nearest sampling).
IGNORE_INDEX = 255

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the foreground classes, averaged over the batch and classes."""
    labelled = (target != IGNORE_INDEX).unsqueeze(1).float()
    probabilities = logits.float().softmax(dim=1)[:, 1:] * labelled
    one_hot = F.one_hot(target.masked_fill(target == IGNORE_INDEX, 0), logits.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2).float()[:, 1:] * labelled
    intersection = (probabilities * one_hot).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + one_hot.sum(dim=(2, 3))
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()


def inverse_frequency_weights(foreground_fraction: float) -> torch.Tensor:
    """Class weights that give background and foreground equal total weight."""
    if not 0 < foreground_fraction < 1:
        raise ValueError(f"weighted_ce needs a foreground fraction strictly between 0 and 1, got {foreground_fraction}")
    return torch.tensor([0.5 / (1 - foreground_fraction), 0.5 / foreground_fraction], dtype=torch.float32)


def build_loss(name: str, foreground_fraction: float | None = None) -> Loss:
    """The loss `name` for logits [B, C, H, W] and integer targets [B, H, W].

    `foreground_fraction` (of the training masks) is needed by "weighted_ce" only. Target pixels
    equal to IGNORE_INDEX count in none of them.
    """
    if name == "ce":
        return lambda logits, target: F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    if name == "weighted_ce":
        if foreground_fraction is None:
            raise ValueError("weighted_ce needs the foreground fraction of the training masks")
        weights = inverse_frequency_weights(foreground_fraction)
        return lambda logits, target: F.cross_entropy(logits.float(), target, weight=weights.to(logits.device),
                                                      ignore_index=IGNORE_INDEX)
    if name == "ce_dice":
        return lambda logits, target: (F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
                                       + soft_dice_loss(logits, target))
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
