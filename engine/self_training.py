"""Self-training (transfer method "self_training"): adaptation by pseudo-labels.

M_A, trained on the source, labels the target training images it has no labels for (the
teacher's pseudo-labels); the most plausible `pseudo_label_keep` share of them is kept, judged by
the same shape prior that selects epochs at 0 % labels (engine/selection.py: an implausible
pseudo-label, e.g. a blob over the body, is the teacher's mistake and would only be learnt). A
student that starts from M_A then trains `transfer_epochs` epochs on the source training images
with their truth, the kept pseudo-labelled target images and the target images the label fraction
keeps for training (with their truth; engine/label_budget.py), with the run's augmentation
recipe: self-training with a strong augmentation on the student and none on the teacher, as in
FixMatch / "Noisy Student" and the self-training baselines of domain adaptation for segmentation
(Zou et al., ECCV 2018).

The epoch is chosen as every transfer run chooses its own (engine/target_training.py): by the
label plan's criterion, with M_A as it is (epoch 0) a candidate the student must beat, else the run
falls back to M_A and says so.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import checkpoints as ckpt
from engine.device import foreground_masks, resolve_device
from engine.label_budget import LabelPlan
from engine.selection import ShapePrior
from engine.target_training import TargetTrainer
from engine.transfer_data import TransferData
from models.loading import TranslateThenSegment
from models.registry import segmenter_from_checkpoint
from protocol.config import RunConfig


def pseudo_labels(source_model: dict, data: TransferData, keep: float, device) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images, masks) of the unlabelled target training images whose pseudo-labels are kept, and
    what was kept: the teacher's masks ranked by plausibility, the top `keep` share (at least one)."""
    teacher = segmenter_from_checkpoint(source_model).to(device).eval()
    images = data.target_unlabelled_images
    if len(images) == 0:
        return images, np.zeros(images.shape, np.uint8), {"n_candidates": 0, "n_kept": 0, "threshold": None}
    masks = foreground_masks(teacher, images, device)
    plausibility = ShapePrior.from_masks(data.source_train_masks).plausibility(masks)
    n_kept = max(1, int(round(keep * len(images))))
    order = np.argsort(-plausibility, kind="stable")[:n_kept]
    order.sort()
    record = {"n_candidates": int(len(images)), "n_kept": int(n_kept),
              "threshold": float(plausibility[order].min()), "mean_plausibility": float(plausibility[order].mean())}
    return images[order], masks[order].astype(np.uint8), record


class SelfTrainingRun(TargetTrainer):
    """The student: the supervised engine's trainer on source + pseudo-labelled target images (plus
    the label plan's labelled ones), its epoch chosen as every transfer run's (TargetTrainer)."""

    name = "self-training"

    def __init__(self, cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, source_model: dict,
                 segmenter_path: Path):
        device = resolve_device(cfg.device)
        kept_images, kept_masks, self.pseudo_record = pseudo_labels(source_model, data, cfg.pseudo_label_keep, device)
        train_images = np.concatenate([data.source_train_images, kept_images, plan.train_images])
        train_masks = np.concatenate([data.source_train_masks, kept_masks, plan.train_masks])
        student = cfg.replace(model=source_model["arch"], width=source_model["arch_kwargs"]["width"],
                              init_weights=str(segmenter_path), epochs=cfg.transfer_epochs)
        super().__init__(cfg, data, plan, run_dir, source_model, student, train_images, train_masks, from_source=True)
        # The candidate of each epoch: the running average of the student's weights at the ends
        # of its epochs so far (stochastic weight averaging, Izmailov et al. 2018). Pseudo-labels
        # are noisy and a student's epochs differ by points on the target; their average does not.
        self.averaged = copy.deepcopy(ckpt.unwrap(self.model))
        self.n_averaged = 0

    # --- weight averaging ---
    def trained_epoch(self) -> None:
        self.n_averaged += 1
        with torch.no_grad():
            for average, current in zip(self.averaged.state_dict().values(),
                                        ckpt.unwrap(self.model).state_dict().values()):
                if average.dtype.is_floating_point:
                    average.mul_((self.n_averaged - 1) / self.n_averaged).add_(current / self.n_averaged)
                else:
                    average.copy_(current)

    def candidate(self) -> nn.Module:
        return self.averaged

    def kept_model(self) -> TranslateThenSegment:
        self.averaged.load_state_dict(self.best["state_dict"])
        return TranslateThenSegment(self.averaged)

    # --- resume: the average travels in last.pt too ---
    def _last_state(self) -> dict[str, Any]:
        # The student itself as the network part (with_best would put the kept average there when
        # it is this epoch's), the average beside it.
        state = {**self._network_checkpoint(), "best": self.best}
        state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=ckpt.rng_state(),
                     best_val_jaccard=self.best_val, best_epoch=self.best_epoch, history=self.history,
                     duration_s=self.duration_s, no_adaptation=self.no_adaptation, keeper=self.keeper.state_dict(),
                     averaged=ckpt.state_copy(self.averaged), n_averaged=self.n_averaged)
        return state

    def resume_from(self, state: dict[str, Any]) -> bool:
        resumed = super().resume_from(state)
        self.averaged.load_state_dict(state["averaged"])
        self.n_averaged = int(state["n_averaged"])
        return resumed

    def describe(self) -> str:
        return (f"{super().describe()}; {self.pseudo_record['n_kept']} of {self.pseudo_record['n_candidates']} "
                "pseudo-labelled target images")

    def extra_summary(self) -> dict[str, Any]:
        return {"pseudo_labels": self.pseudo_record}


def self_training_run(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, segmenter_path: Path,
                      source_model: dict) -> SelfTrainingRun:
    """The trainer of a self-training run: `run()` trains it alone; engine.fused trains several together."""
    if cfg.transfer_epochs < 1:
        raise ValueError(f"transfer_epochs must be at least 1, got {cfg.transfer_epochs}")
    return SelfTrainingRun(cfg, data, plan, run_dir, source_model, segmenter_path)
