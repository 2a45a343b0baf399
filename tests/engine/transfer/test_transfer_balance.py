"""The D/G balance is logged every epoch, and saturated discriminators are reported in the log,
the warm-up checkpoint and result.json."""
import json
import logging

import pytest
import torch

from engine.transfer.dispatch import train_transfer
from engine.transfer.proposed.diagnostics import SATURATION_EPOCHS, adversarial_balance, saturation_report
from engine.transfer.proposed.warmup import warmup_translator

# Generators stuck at the identity (residual, learning rate ~0) against discriminators with a huge
# one and no spectral norm: the "translations" are the other domain's images as they are, and the
# discriminators learn to separate the two domains perfectly within a few epochs.
FORCED_SATURATION = dict(warmup_epochs=10, transfer_epochs=6, gan_lr=1e-8, d_lr_ratio=1e5, spectral_norm=False,
                         residual_generators=True)


def epochs(flags):
    return [{"epoch": i + 1, "saturated": flag, "balance_d": 0.001 if flag else 0.2, "balance_g": 0.99 if flag else 0.4}
            for i, flag in enumerate(flags)]


def test_saturation_needs_consecutive_epochs_near_the_discriminators_corner():
    assert adversarial_balance({"D_d_a": 0.002, "D_d_b": 0.004, "G_adv": 1.99}, w_adv=1.0)["saturated"]
    assert not adversarial_balance({"D_d_a": 0.002, "D_d_b": 0.004, "G_adv": 1.2}, w_adv=1.0)["saturated"]
    # Per unit of w_adv: the same game at w_adv 10 is just as saturated.
    assert adversarial_balance({"D_d_a": 0.02, "D_d_b": 0.04, "G_adv": 19.9}, w_adv=10.0)["saturated"]
    assert adversarial_balance({"D_d_a": 0.0, "D_d_b": 0.0, "G_adv": 0.0}, w_adv=0.0) == {}
    assert saturation_report(epochs([True] * (SATURATION_EPOCHS - 1) + [False] * 3), "warm-up") is None
    report = saturation_report(epochs([False, True, False] + [True] * (SATURATION_EPOCHS + 1)), "warm-up")
    assert (report["first_epoch"], report["epochs"]) == (4, SATURATION_EPOCHS + 1)


@pytest.mark.parametrize("forced", [True, False], ids=["forced-saturated", "healthy"])
def test_the_saturation_warning_fires_on_a_saturated_run_and_not_on_a_healthy_one(forced, make_cfg, data_for, source,
                                                                                   target, segmenter_checkpoint,
                                                                                   tmp_path, caplog):
    cfg = make_cfg(**(FORCED_SATURATION if forced else dict(warmup_epochs=8, transfer_epochs=4)))
    with caplog.at_level(logging.INFO):
        translator = warmup_translator(cfg, source, target, tmp_path / "translators")
        train_transfer(cfg, data_for(cfg), tmp_path / "run", segmenter_checkpoint, translator)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "saturated" in r.getMessage()]
    balance_lines = [r.getMessage() for r in caplog.records if "D/G balance" in r.getMessage()]
    assert len(balance_lines) == cfg.warmup_epochs + cfg.transfer_epochs  # every epoch of both phases
    warmup = torch.load(translator, weights_only=False)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert all("balance_d" in epoch for epoch in warmup["history"])
    if forced:
        assert warmup["saturation"]["phase"] == "warm-up" and warmup["saturation"]["d_loss"] < 0.01
        assert summary["discriminators_saturated"] and set(summary["saturation"]) == {"warmup", "transfer"}
        assert any("during the warm-up" in w for w in warnings) and any("during the transfer" in w for w in warnings)
    else:
        assert warmup["saturation"] is None
        assert summary["discriminators_saturated"] is False and summary["saturation"] == {}
        assert not warnings


@pytest.mark.parametrize("translator", ["munit", "cyclegan"])
def test_r1_penalty_and_instance_noise_act_on_the_discriminators(translator):
    """r1_gamma adds gamma/2 E|grad D(x)|^2 on real inputs, a term the discriminators' step
    back-propagates; instance_noise perturbs their inputs while training and never in eval()."""
    from models.registry import build_translator
    from models.translators.base import r1_penalty

    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    plain = build_translator(translator, width=8, r1_gamma=0.0, instance_noise=0.0)
    assert "r1" not in plain.discriminator_losses(a, b)

    # Without spectral normalisation, whose power iteration moves with every forward pass in train().
    penalised = build_translator(translator, width=8, r1_gamma=2.0, instance_noise=0.0, spectral_norm=False)
    losses = penalised.discriminator_losses(a, b)
    real_a = a.clone().requires_grad_(True)
    real_b = b.clone().requires_grad_(True)
    expected = (r1_penalty(penalised.dis_a(real_a), real_a) + r1_penalty(penalised.dis_b(real_b), real_b)).detach()
    penalty = float(losses["r1"].detach())
    assert penalty == pytest.approx(float(expected), rel=1e-5) and penalty > 0
    penalised.zero_grad(set_to_none=True)
    losses["r1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in penalised.dis_a.parameters())

    noisy = build_translator(translator, width=8, r1_gamma=0.0, instance_noise=0.5)
    noisy.eval()
    first, second = (float(noisy.discriminator_losses(a, b)["total"].detach()) for _ in range(2))
    assert first == second  # no noise in eval()
    noisy.train()
    torch.manual_seed(1)
    noised = float(noisy.discriminator_losses(a, b)["total"].detach())
    torch.manual_seed(2)
    assert noised != float(noisy.discriminator_losses(a, b)["total"].detach())
