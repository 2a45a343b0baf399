"""Choosing the transfer epoch without target labels (issue 9): plain PyTorch + numpy, no Ray.

At 0 % target labels nothing on the target can be scored against truth, and the source-side
validation (A -> B -> A) is blind to what the translation does to target images: a translator
that inverts both domains is perfectly cycle-consistent, the source score stays high, and
M_A(G_BA(b)) labels the body. So the epoch is chosen on the TARGET validation images, without
their labels, by how plausible the predicted masks are as masks of the structure, and "no
adaptation" (M_A on b as it is, the source_only model) is always a candidate: an adapted epoch is
kept only if it is clearly (by `margin`) more plausible; otherwise the run falls back and says so.

Plausibility of one predicted mask (`ShapePrior.plausibility`): its best Jaccard overlap with any
SOURCE training mask, both resampled to a coarse SHAPE_GRID x SHAPE_GRID grid (a multi-atlas,
nearest-neighbour shape prior, in the spirit of shape-model quality control without ground truth:
Liu et al. 2019, Larrazabal et al. 2020; the source labels are training data, never target
labels). A candidate's score is the mean plausibility over the target validation images. The
known failure modes all fall off the source masks:
- an inverted translation makes M_A label the body: a wide blob where no lung mask lies;
- padding, collimation bands or the dark air outside the body labelled lung: extra regions;
- a translator that outputs noise: fragments, holes, or nothing (an empty mask scores 0).
Measured on phantoms of both regimes (severe and mild shift), the score ranked the candidate
epochs of many runs in the order of their true target Jaccard (Spearman about 0.9), where the
segmenter's confidence ranked them backwards on the mild shift (confidently labelling the body)
and a position-free variant (masks cropped to their bounding box) let an inverted run through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweep.config import SELECTIONS
from sweep.engine.inference import as_batch, foreground_masks
# The result.json values of "selection_criterion" live with the run directory's contract.
from sweep.engine.run_dir import SOURCE_JACCARD, TARGET_JACCARD, TARGET_PLAUSIBILITY

if TYPE_CHECKING:
    from sweep.config import RunConfig
    from sweep.engine.transfer_data import TransferData

# Side of the grid masks are resampled to before they are compared: coarse enough that the
# comparison is about the shape of the lung fields, not their boundary's pixels.
SHAPE_GRID = 32
# One-sided confidence of the paired comparisons of TargetSelection: an adapted epoch must beat no
# adaptation, and an earlier epoch a later one, at this level (a paired t over the validation
# images). 0.9 rather than 0.95: with the phantoms' 6 validation images, 0.95 refused a
# translation that lifted 4 of them from about 0.1 to 0.6 Jaccard (and cost 2 of them a little).
SELECTION_CONFIDENCE = 0.9


def selection_criterion(cfg: "RunConfig", data: "TransferData") -> str:
    """Labels on the target validation split decide when the run keeps any; otherwise cfg.selection does."""
    if cfg.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {cfg.selection!r}")
    if data.target_val_masks is not None and data.n_labelled > 0:
        return TARGET_JACCARD
    return TARGET_PLAUSIBILITY if cfg.selection == "target" else SOURCE_JACCARD


def coarse_masks(masks: np.ndarray, grid: int = SHAPE_GRID) -> np.ndarray:
    """Masks [N, S, S] resampled to [N, grid, grid] (area average, then at least half covered)."""
    tensor = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
    return (F.interpolate(tensor, size=(grid, grid), mode="area")[:, 0] >= 0.5).numpy()


def pairwise_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Jaccard overlaps of two stacks of boolean masks (empty vs empty: 0)."""
    flat_a = a.reshape(len(a), -1).astype(np.float32)
    flat_b = b.reshape(len(b), -1).astype(np.float32)
    intersection = flat_a @ flat_b.T
    union = flat_a.sum(1)[:, None] + flat_b.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0)


@dataclass
class ShapePrior:
    """The source training masks on the coarse grid: the atlas predicted masks are compared with."""

    atlas: np.ndarray  # bool [N, SHAPE_GRID, SHAPE_GRID]

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> "ShapePrior":
        atlas = coarse_masks(np.asarray(masks))
        atlas = atlas[atlas.reshape(len(atlas), -1).any(axis=1)]
        if len(atlas) == 0:
            raise ValueError("the source training masks are all empty: no shape prior to select with")
        return cls(atlas)

    def plausibility(self, masks: np.ndarray) -> np.ndarray:
        """Per mask, the best Jaccard with a source mask on the coarse grid; in [0, 1]."""
        return pairwise_jaccard(coarse_masks(masks), self.atlas).max(axis=1)


def lower_confidence_bound(gain: np.ndarray) -> float:
    """One-sided lower confidence bound (SELECTION_CONFIDENCE, paired t) of the mean of per-image
    differences; the mean itself when they do not vary."""
    from scipy.stats import t as student_t

    gain = np.asarray(gain, float)
    mean = float(gain.mean())
    if len(gain) < 2 or gain.std(ddof=1) == 0:
        return mean
    return mean - float(student_t.ppf(SELECTION_CONFIDENCE, len(gain) - 1)) * float(gain.std(ddof=1)) / math.sqrt(len(gain))


@dataclass
class Decision:
    """Whether the chosen adapted epoch is kept over no adaptation, and the evidence."""

    keep_adaptation: bool
    mean_gain: float  # mean per-image plausibility gain of the adapted epoch over no adaptation
    lower_bound: float  # one-sided lower confidence bound of that gain (paired t)

    def to_dict(self) -> dict:
        return {"keep_adaptation": self.keep_adaptation, "mean_gain": self.mean_gain, "lower_bound": self.lower_bound}


class TargetSelection:
    """Scores each epoch on the unlabelled target validation images, follows which adapted epoch
    to keep, and decides at the end between it and no adaptation.

    Which adapted epoch: the latest one that is not significantly less plausible than the most
    plausible epoch before it (paired, image by image). The score separates gross failures from
    sound masks well, but not sound masks from each other: differences within its noise are no
    reason to prefer an earlier, less trained epoch.
    """

    def __init__(self, source_masks: np.ndarray, target_images: np.ndarray, margin: float):
        if len(target_images) == 0:
            raise ValueError("target-aware selection needs target validation images; the split has none")
        self.prior = ShapePrior.from_masks(source_masks)
        self.images = target_images
        self.margin = float(margin)
        self._on_device: tuple[str, torch.Tensor] | None = None  # the images, uploaded once per device

    def plausibility(self, model: nn.Module, device: torch.device) -> np.ndarray:
        """Per target validation image, the plausibility of `model`'s predicted mask."""
        if self._on_device is None or self._on_device[0] != str(device):
            self._on_device = (str(device), as_batch(self.images, device))
        return self.prior.plausibility(foreground_masks(model, self._on_device[1], device))

    @staticmethod
    def leads(epoch: np.ndarray, leader: np.ndarray | None) -> bool:
        """Whether an epoch with per-image plausibility `epoch` is the most plausible so far, given
        the most plausible earlier epoch's `leader` (None before the first)."""
        return leader is None or epoch.mean() > leader.mean()

    @staticmethod
    def follows(epoch: np.ndarray, leader: np.ndarray | None) -> bool:
        """Whether an epoch with per-image plausibility `epoch` becomes the kept adapted epoch, given
        the most plausible earlier epoch's `leader` (None before the first)."""
        if TargetSelection.leads(epoch, leader):
            return True
        return lower_confidence_bound(leader - epoch) <= 0

    def decide(self, adapted: np.ndarray, no_adaptation: np.ndarray) -> Decision:
        """Keep the adapted epoch only if it is clearly more plausible than no adaptation, image by
        image: its mean gain reaches `margin` AND the one-sided lower confidence bound of the gain
        is above zero. On a mild shift a handful of validation images can favour an epoch by
        chance; doing no harm comes first, so chance is not enough."""
        gain = np.asarray(adapted, float) - np.asarray(no_adaptation, float)
        mean, lower = float(gain.mean()), lower_confidence_bound(gain)
        return Decision(keep_adaptation=bool(mean >= self.margin and lower > 0), mean_gain=mean, lower_bound=lower)
