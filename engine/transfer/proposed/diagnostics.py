"""What a person reads to judge a translation: the losses in words, the discriminator / generator
balance and its saturation warning, and the PNG samples of translations there and back."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from engine.runtime.device import (
    as_batch,
)
from models.translators.base import N_ADVERSARIAL_TERMS, Translator

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{name} {value:.3f}" for name, value in losses.items() if not name.endswith("_total"))


# ---------------------------------------------------------------------------------------------
# The balance of the adversarial game, watched every epoch (warm-up and transfer).
#
# Both numbers are per discriminator and per unit of w_adv. LSGAN: at chance (every score 0.5)
# the discriminator loss is 0.25 and G_adv 0.25; discriminators that win outright (real 1,
# translated 0) give 0 and 1. Discriminators "saturate" when they stay near that corner: the
# generators then get no useful adversarial signal and only the cycle and reconstruction terms
# shape the translation, which an inversion satisfies as well as the right answer.
SATURATION_D_LOSS = 0.01


SATURATION_G_ADV = 0.9


SATURATION_EPOCHS = 3  # consecutive epochs before the warning


def adversarial_balance(losses: dict[str, float], w_adv: float) -> dict[str, float | bool]:
    """{"balance_d", "balance_g", "saturated"} from one epoch's mean losses ({} without an adversarial term)."""
    if w_adv <= 0 or not {"D_d_a", "D_d_b", "G_adv"} <= set(losses):
        return {}
    d_loss = (losses["D_d_a"] + losses["D_d_b"]) / (N_ADVERSARIAL_TERMS * w_adv)
    g_adv = losses["G_adv"] / (N_ADVERSARIAL_TERMS * w_adv)
    return {"balance_d": d_loss, "balance_g": g_adv,
            "saturated": bool(d_loss < SATURATION_D_LOSS and g_adv > SATURATION_G_ADV)}


def format_balance(balance: dict) -> str:
    if not balance:
        return "D/G balance n/a (w_adv 0)"
    flag = " SATURATED" if balance["saturated"] else ""
    return (f"D/G balance: D {balance['balance_d']:.3f} G_adv {balance['balance_g']:.3f} "
            f"(chance 0.25/0.25, lost 0/1){flag}")


def saturation_report(history: Sequence[dict], phase: str) -> dict | None:
    """The longest stretch of consecutive saturated epochs in `history`, if it lasts at least
    SATURATION_EPOCHS epochs; None for a healthy run."""
    longest: list[dict] = []
    stretch: list[dict] = []
    for record in history:
        stretch = stretch + [record] if record.get("saturated") else []
        if len(stretch) > len(longest):
            longest = stretch
    if len(longest) < SATURATION_EPOCHS:
        return None
    return {"phase": phase, "first_epoch": int(longest[0]["epoch"]), "last_epoch": int(longest[-1]["epoch"]),
            "epochs": len(longest), "d_loss": float(np.mean([r["balance_d"] for r in longest])),
            "g_adv": float(np.mean([r["balance_g"] for r in longest]))}


def saturation_message(report: dict) -> str:
    return (f"discriminators saturated during the {report['phase']} (epochs {report['first_epoch']}-"
            f"{report['last_epoch']}): D loss {report['d_loss']:.4f} < {SATURATION_D_LOSS} with G_adv "
            f"{report['g_adv']:.3f} of its maximum 1 (per discriminator and unit w_adv); the generators got no "
            f"adversarial signal, so nothing but the cycle term shaped the translation. Look at the translation "
            f"samples; keep spectral_norm on, or try r1_gamma / instance_noise / a lower d_lr_ratio")


def watch_saturation(history: Sequence[dict], phase: str) -> None:
    """Warn in the log the epoch a stretch of saturated epochs reaches SATURATION_EPOCHS."""
    recent = history[-SATURATION_EPOCHS:]
    if len(recent) == SATURATION_EPOCHS and all(r.get("saturated") for r in recent) and (
            len(history) == SATURATION_EPOCHS or not history[-SATURATION_EPOCHS - 1].get("saturated")):
        log.warning(saturation_message(saturation_report(recent, phase)))


def _to_gray8(image: np.ndarray) -> np.ndarray:
    # Standardised intensities: +-3 standard deviations covers the anatomy without clipping bone.
    return (np.clip((image + 3.0) / 6.0, 0.0, 1.0) * 255).astype(np.uint8)


@torch.no_grad()
def save_translation_samples(translator: Translator, images_a: np.ndarray, images_b: np.ndarray, out_dir: Path,
                             n: int = 4) -> list[Path]:
    """Write a_to_b.png (a | G_AB(a) | G_BA(G_AB(a))) and b_to_a.png (b | G_BA(b) | G_AB(G_BA(b)))."""
    from PIL import Image

    device = next(translator.parameters()).device
    was_training = translator.training
    translator.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, images, forward, back in [("a_to_b", images_a, translator.translate_ab, translator.translate_ba),
                                        ("b_to_a", images_b, translator.translate_ba, translator.translate_ab)]:
        picked = np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)
        x = as_batch(images[picked], device)
        there = forward(x)
        rows = [np.concatenate([_to_gray8(t[i, 0].cpu().numpy()) for t in (x, there, back(there))], axis=1)
                for i in range(len(picked))]
        path = out_dir / f"{name}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        written.append(path)
    translator.train(was_training)
    return written
