"""Segmentation losses: values on hand-made logits and the choice by name."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import LOSSES, build_loss, inverse_frequency_weights, soft_dice_loss


def confident_logits(target, margin=20.0):
    """Logits that predict `target` with near certainty."""
    return F.one_hot(target, 2).permute(0, 3, 1, 2).float() * margin


def test_ce_is_cross_entropy():
    target = torch.tensor([[[0, 1], [1, 1]]])
    uniform = torch.zeros(1, 2, 2, 2)
    assert build_loss("ce")(uniform, target).item() == pytest.approx(math.log(2))


def test_soft_dice_is_zero_when_right_and_near_one_when_wrong():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    assert soft_dice_loss(confident_logits(target), target).item() == pytest.approx(0.0, abs=1e-3)
    assert soft_dice_loss(confident_logits(1 - target), target).item() > 0.9


def test_weighted_ce_balances_the_classes():
    weights = inverse_frequency_weights(0.02)
    assert weights[1] / weights[0] == pytest.approx(0.98 / 0.02)
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, :1, :2] = 1  # 2 % foreground
    missed = confident_logits(torch.zeros_like(target), margin=2.0)
    # Missing the rare class costs more with the weights than without.
    assert build_loss("weighted_ce", 0.02)(missed, target) > build_loss("ce")(missed, target)


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_has_gradients(name):
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 8, 8))
    build_loss(name, foreground_fraction=0.3)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_choices_are_reported():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal")
    with pytest.raises(ValueError, match="foreground fraction"):
        build_loss("weighted_ce")
    with pytest.raises(ValueError, match="strictly between"):
        inverse_frequency_weights(0.0)
