"""Which target labels a transfer run may read, and what chooses its epoch. Plain numpy.

The label budget of a run at f % is the labels it uses, training and selection together:
- "honest" (the default): the run sees the f % labelled target images and nothing else of the
  target's truth. With the fixed schedule (selection "schedule", the default) there is no epoch
  to choose and it trains on all of them. When it chooses epochs (selection "target"), with at
  least HOLD_OUT_MIN of them it holds back a seeded share (HOLD_OUT_SHARE, at least
  HOLD_OUT_MIN_IMAGES) to choose its epoch on and trains on the rest; with fewer it trains on
  all of them and chooses its epoch as a 0 % run does, by the plausibility of its masks on the
  unlabelled target validation images.
- "paper": the paper's protocol, the labelled target validation split chooses the epoch at
  every fraction above 0, so a run said to use 2 labels reads those of the validation split too.
At 0 % both budgets are the same run. Whatever the budget, what the run ends with is judged
against where it started (M_A as it is, for the adaptation methods) by its guard (engine/evaluation/guard.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.data.segmentation import FullFrame
from protocol.config import LABEL_BUDGETS, SELECTIONS
from protocol.run_dir import FIXED_SCHEDULE, HELD_OUT_JACCARD, SOURCE_JACCARD, TARGET_JACCARD, TARGET_PLAUSIBILITY

if TYPE_CHECKING:
    from engine.data.transfer import TransferData
    from protocol.config import RunConfig


# Fewer labelled target images than this are all trained on, and the epoch is chosen without
# labels: holding back one or two of four leaves too few to learn from and too few to choose with.
HOLD_OUT_MIN = 5


# The share of the labelled images held back to choose the epoch with (at least
# HOLD_OUT_MIN_IMAGES): Montgomery at 10 % (8 images) holds back 2, at 100 % (82) 16.
HOLD_OUT_SHARE = 0.2


HOLD_OUT_MIN_IMAGES = 2


@dataclass
class LabelPlan:
    """The target labels a run trains on, the images it chooses its epoch with, and how."""

    budget: str
    criterion: str  # FIXED_SCHEDULE, TARGET_JACCARD, HELD_OUT_JACCARD, TARGET_PLAUSIBILITY or SOURCE_JACCARD
    train_images: np.ndarray  # labelled target images the run trains on
    train_masks: np.ndarray
    select_images: np.ndarray | None = None  # labelled images the epoch is chosen on (Jaccard criteria)
    select_masks: np.ndarray | None = None
    select_frame: FullFrame | None = None

    @property
    def labelled_selection(self) -> bool:
        return self.criterion in (TARGET_JACCARD, HELD_OUT_JACCARD)

    @property
    def n_train(self) -> int:
        return int(len(self.train_images))

    @property
    def n_select(self) -> int:
        return int(len(self.select_images)) if self.labelled_selection else 0

    def record(self) -> dict[str, Any]:
        """What result.json records: the budget, the labels used and their roles."""
        return {"label_budget": self.budget, "target_labels_used": self.n_train + self.n_select,
                "target_labels_trained": self.n_train, "target_labels_selecting": self.n_select,
                "selection_criterion": self.criterion}


def held_out_count(n_labelled: int) -> int:
    """How many of `n_labelled` labelled target images an honest run holds back (0: none)."""
    if n_labelled < HOLD_OUT_MIN:
        return 0
    return max(HOLD_OUT_MIN_IMAGES, int(round(HOLD_OUT_SHARE * n_labelled)))


def held_out_positions(n_labelled: int, seed: int, repetition: int) -> np.ndarray:
    """Sorted positions, among the labelled images, of those held back to choose with; seeded by
    (seed, repetition) so that every method of a cell holds back the same images."""
    count = held_out_count(n_labelled)
    rng = np.random.default_rng([seed, repetition, 19])
    return np.sort(rng.permutation(n_labelled)[:count])


def label_plan(cfg: "RunConfig", data: "TransferData") -> LabelPlan:
    """The plan of `cfg`'s run on `data` (see the module docstring)."""
    if cfg.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {cfg.selection!r}")
    if cfg.label_budget not in LABEL_BUDGETS:
        raise ValueError(f"label_budget must be one of {', '.join(LABEL_BUDGETS)}, got {cfg.label_budget!r}")
    unlabelled = {"schedule": FIXED_SCHEDULE, "target": TARGET_PLAUSIBILITY, "source": SOURCE_JACCARD}[cfg.selection]
    images, masks = data.target_labelled_images, data.target_labelled_masks
    if data.n_labelled == 0:
        return LabelPlan(cfg.label_budget, unlabelled, images, masks)
    if cfg.label_budget == "paper":
        if data.target_val_masks is None:
            raise ValueError(f"{data.target_name}: the paper's label budget chooses epochs on the labelled "
                             "validation split, and it has no labels")
        return LabelPlan("paper", TARGET_JACCARD, images, masks, data.target_val_images, data.target_val_masks,
                         data.target_val_frame)
    if cfg.selection == "schedule":  # no epoch to choose: every label trains
        return LabelPlan("honest", FIXED_SCHEDULE, images, masks)
    held = held_out_positions(data.n_labelled, cfg.seed, cfg.repetition)
    if len(held) == 0:
        return LabelPlan("honest", unlabelled, images, masks)
    kept = np.setdiff1d(np.arange(data.n_labelled), held)
    frame = data.target_labelled_frame.take(held) if data.target_labelled_frame is not None else None
    return LabelPlan("honest", HELD_OUT_JACCARD, images[kept], masks[kept], images[held], masks[held], frame)
