"""The shape-plausibility score of predicted masks, and choosing a transfer epoch with it:
plain PyTorch + numpy.

At 0 % target labels nothing on the target can be scored against truth, and the source-side
validation (A -> B -> A) is blind to what the translation does to target images: a translator
that inverts both domains is perfectly cycle-consistent, the source score stays high, and
M_A(G_BA(b)) labels the body. The plausibility of the masks predicted on the TARGET validation
images, without their labels, sees that. Under `selection=target` it chooses the epoch at 0 %
labels, and under `guard=strict` "no adaptation" (M_A on b as it is, the source_only model) is
always a candidate: an adapted epoch is kept only if it is clearly (by `margin`) more plausible;
otherwise the run falls back and says so. Under the default fixed schedule it is one of the harm guard's signals
(engine.evaluation.guard), where it decides only collapse and the repair of gross failures.

Plausibility of one predicted mask (`ShapePrior.plausibility`): its best Jaccard overlap with any
SOURCE training mask, both resampled to a coarse SHAPE_GRID x SHAPE_GRID grid (a multi-atlas,
nearest-neighbour shape prior, in the spirit of shape-model quality control without ground truth:
Liu et al. 2019, Larrazabal et al. 2020; the source labels are training data, never target
labels). A candidate's score is the mean plausibility over the target validation images. The
known failure modes all fall off the source masks:
- an inverted translation makes M_A label the body: a wide blob where no lung mask lies;
- padding, collimation bands or the dark air outside the body labelled lung: extra regions;
- a translator that outputs noise: fragments, holes, or nothing (an empty mask scores 0).
It separates gross failures from sound masks, not sound masks from each other: it saturates on
sound masks, so on a mild shift it can rank a worse model as more plausible (its rank
correlation with the true target Jaccard per regime: docs/adaptation.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime.device import as_batch
from engine.runtime.prediction import foreground_masks
from protocol.intervals import t_interval
from protocol.run_dir import FIXED_SCHEDULE, SOURCE_JACCARD, TARGET_PLAUSIBILITY

# Side of the grid masks are resampled to before they are compared: coarse enough that the
# comparison is about the shape of the lung fields, not their boundary's pixels.
SHAPE_GRID = 32


# One-sided confidence of the paired comparisons of TargetSelection: an adapted epoch must beat no
# adaptation, and an earlier epoch a later one, at this level (a paired t over the validation
# images). 0.9 rather than 0.95: with a handful of validation images, 0.95 refuses a translation
# that lifts most of them from gross failure to sound masks while costing the others a little.
SELECTION_CONFIDENCE = 0.9


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
    gain = np.asarray(gain, float)
    mean = float(gain.mean())
    if len(gain) < 2 or gain.std(ddof=1) == 0:
        return mean
    return t_interval(gain, SELECTION_CONFIDENCE, alternative="greater")[0]


@dataclass
class Decision:
    """Whether the chosen adapted epoch is kept over no adaptation, and the evidence: for the strict
    guard the mean gain by the run's criterion and its bound; for the harm guard (engine/evaluation/guard.py)
    the signal that found harm (`rule`) and every signal's comparison (`evidence`)."""

    keep_adaptation: bool
    mean_gain: float  # mean per-image gain of the adapted epoch over no adaptation (strict: its criterion)
    lower_bound: float  # one-sided lower confidence bound of that gain (paired t)
    rule: str = ""  # what decided, in words (protocol.run_dir's SELECTION_RULES)
    evidence: dict | None = None

    def to_dict(self) -> dict:
        out = {"keep_adaptation": self.keep_adaptation, "mean_gain": self.mean_gain, "lower_bound": self.lower_bound}
        if self.rule:
            out["rule"] = self.rule
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out


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


class KeepBest:
    """Which epoch a transfer run keeps, by per-image scores of its candidates, where it started
    (epoch 0: `start`) being one of them.

    - Target plausibility: the adapted epoch is followed as TargetSelection.follows says, and at
      the end kept over the start only if clearly more plausible (TargetSelection.decide, `margin`).
    - A Jaccard of labelled target images: the epoch of the highest mean is followed, and at the
      end kept over the start only if its gain is positive with confidence (a one-sided lower
      bound above 0, paired t over the images), so a run that only gets worse, or not clearly
      better, keeps where it started.
    - The source validation Jaccard (the paper's selection at 0 %): the epoch of the highest mean,
      the start left out. On source images M_A as it is is what it was trained for and wins
      nearly always; that says nothing of the target, so it is no comparison.
    - The fixed schedule: every epoch replaces the one before; the last is kept. Whether it
      replaces the start is the harm guard's question (engine/evaluation/guard.py), not this class's.
    """

    def __init__(self, criterion: str, margin: float = 0.0, start_is_candidate: bool = True):
        self.criterion = criterion
        self.margin = float(margin)
        # Without a guard (the paper's protocol) where the run started is no candidate at all.
        self.start_is_candidate = start_is_candidate
        self.start_scores: np.ndarray | None = None
        self.kept_scores: np.ndarray | None = None  # of the kept trained epoch; None: none beat the start
        self.leading_scores: np.ndarray | None = None  # plausibility: the most plausible epoch so far

    @property
    def by_plausibility(self) -> bool:
        return self.criterion == TARGET_PLAUSIBILITY

    @property
    def compares_start(self) -> bool:
        return self.start_is_candidate and self.criterion != SOURCE_JACCARD

    def start(self, scores: np.ndarray) -> None:
        if self.compares_start:
            self.start_scores = np.asarray(scores, float)

    def best_mean(self) -> float:
        """The kept candidate's mean score (the start's while no trained epoch is kept)."""
        kept = self.kept_scores if self.kept_scores is not None else self.start_scores
        return -math.inf if kept is None else float(kept.mean())

    def consider(self, scores: np.ndarray) -> bool:
        """Whether the epoch just trained, with per-image `scores`, becomes the kept one."""
        scores = np.asarray(scores, float)
        if self.criterion == FIXED_SCHEDULE:
            self.kept_scores = scores
            return True
        if self.by_plausibility:
            keep = TargetSelection.follows(scores, self.leading_scores)
            if TargetSelection.leads(scores, self.leading_scores):
                self.leading_scores = scores
        else:
            keep = scores.mean() > self.best_mean()
        if keep:
            self.kept_scores = scores
        return bool(keep)

    def decide(self) -> Decision | None:
        """Whether the kept trained epoch replaces where the run started (None: no comparison)."""
        if not self.compares_start:
            return None
        if self.kept_scores is None:
            return Decision(keep_adaptation=False, mean_gain=0.0, lower_bound=0.0)
        gain = self.kept_scores - self.start_scores
        mean, lower = float(gain.mean()), lower_confidence_bound(gain)
        if self.by_plausibility:
            return Decision(keep_adaptation=bool(mean >= self.margin and lower > 0), mean_gain=mean, lower_bound=lower)
        # Labelled images, yet few (a fifth of the fraction's): a positive mean on them is no
        # evidence by itself, so the kept epoch must beat the start image by image with the
        # plausibility guard's confidence (no margin: a Jaccard gain is a gain).
        return Decision(keep_adaptation=bool(mean > 0 and lower > 0), mean_gain=mean, lower_bound=lower)

    def state_dict(self) -> dict[str, Any]:
        return {name: None if value is None else value.tolist() for name, value in
                (("start", self.start_scores), ("kept", self.kept_scores), ("leading", self.leading_scores))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def array(value):
            return None if value is None else np.asarray(value, float)

        self.start_scores, self.kept_scores = array(state["start"]), array(state["kept"])
        self.leading_scores = array(state["leading"])
