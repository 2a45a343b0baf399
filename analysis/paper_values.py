"""The numbers Oliveira & dos Santos (2018) published, as data, in percent.

Transcribed from Table I (JSRT, 5-fold cross-validation) and Table II (JSRT -> Montgomery,
U-Net, lungs). `None` is a value the paper does not give (a "-" in its tables). Keys use the
names declared in `protocol.config`, so the report can put a paper value next to each cell.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedValue:
    mean: float
    std: float | None = None


@dataclass(frozen=True)
class PublishedSegmentation:
    jaccard: PublishedValue
    dice: PublishedValue | None


def _row(j_mean, j_std, d_mean=None, d_std=None) -> PublishedSegmentation:
    dice = None if d_mean is None else PublishedValue(d_mean, d_std)
    return PublishedSegmentation(PublishedValue(j_mean, j_std), dice)


# Table I, the three networks the paper trained: (task, model) -> Jaccard / Dice, percent.
TABLE_I: dict[tuple[str, str], PublishedSegmentation] = {
    ("lungs", "fcn"): _row(95.05, 0.20, 97.45, 0.11),
    ("lungs", "unet"): _row(96.02, 0.33, 97.96, 0.17),
    ("lungs", "segnet"): _row(95.54, 0.32, 97.71, 0.17),
    ("heart", "fcn"): _row(89.25, 0.56, 94.24, 0.35),
    ("heart", "unet"): _row(89.21, 1.32, 94.16, 0.88),
    ("heart", "segnet"): _row(89.64, 0.91, 94.44, 0.55),
    ("clavicles", "fcn"): _row(75.52, 1.03, 85.90, 0.68),
    ("clavicles", "unet"): _row(86.54, 0.99, 92.58, 0.80),
    ("clavicles", "segnet"): _row(87.30, 0.67, 93.08, 0.49),
}

# Table I, the methods the paper compared against (quoted from the literature, not trained).
TABLE_I_REFERENCES: dict[str, dict[str, PublishedSegmentation]] = {
    "lungs": {
        "InvertedNet [5]": _row(95.10, None, 97.50),
        "SCAN [4]": _row(94.70, 0.40, 97.30, 0.20),
        "Atlas [2]": _row(95.40, 1.50, 96.70, 0.80),
        "Hybrid Voting [1]": _row(94.90, 2.00),
        "Human Observer [1]": _row(94.60, 1.80),
    },
    "heart": {
        "InvertedNet [5]": _row(87.10, None, 93.10),
        "SCAN [4]": _row(86.60, 1.20, 92.70, 0.20),
        "Hybrid Voting [1]": _row(86.00, 0.56),
        "Human Observer [1]": _row(87.80, 5.40),
    },
    "clavicles": {
        "InvertedNet [5]": _row(87.00, None, 93.00),
        "ASM [1]": _row(73.40, 13.70),
        "Hybrid Voting [1]": _row(73.60, 10.60),
        "Human Observer [1]": _row(89.60, 3.70),
    },
}

# The only transfer target the paper reports.
TABLE_II_TARGET = "montgomery"

# Table II: (label fraction in percent, method) -> target Jaccard, percent. The paper has no
# `source_only` column, and "From Scratch" at 0 % is "-" (nothing to train on).
TABLE_II: dict[tuple[float, str], PublishedValue] = {
    (0.0, "proposed"): PublishedValue(88.20, 9.80),
    (0.0, "finetune"): PublishedValue(4.30, 4.13),
    (1.25, "proposed"): PublishedValue(88.83, 9.81),
    (1.25, "finetune"): PublishedValue(78.94, 13.32),
    (1.25, "scratch"): PublishedValue(54.23, 13.37),
    (2.5, "proposed"): PublishedValue(88.25, 10.19),
    (2.5, "finetune"): PublishedValue(83.32, 12.32),
    (2.5, "scratch"): PublishedValue(56.01, 13.76),
    (5.0, "proposed"): PublishedValue(90.79, 7.05),
    (5.0, "finetune"): PublishedValue(83.46, 8.60),
    (5.0, "scratch"): PublishedValue(55.10, 14.42),
    (10.0, "proposed"): PublishedValue(89.18, 9.18),
    (10.0, "finetune"): PublishedValue(83.66, 9.69),
    (10.0, "scratch"): PublishedValue(87.80, 6.78),
    (20.0, "proposed"): PublishedValue(91.26, 7.20),
    (20.0, "finetune"): PublishedValue(88.71, 8.73),
    (20.0, "scratch"): PublishedValue(89.50, 7.65),
    (50.0, "proposed"): PublishedValue(92.15, 5.90),
    (50.0, "finetune"): PublishedValue(93.78, 5.42),
    (50.0, "scratch"): PublishedValue(89.82, 4.34),
    (100.0, "proposed"): PublishedValue(93.18, 5.47),
    (100.0, "finetune"): PublishedValue(94.81, 5.15),
    (100.0, "scratch"): PublishedValue(94.16, 4.57),
}


def table_ii_value(target: str, label_fraction: float, method: str) -> PublishedValue | None:
    """The paper's Table II value for a cell, or None where the paper has none."""
    if target != TABLE_II_TARGET:
        return None
    return TABLE_II.get((float(label_fraction), method))
