"""Self-training (transfer method "self_training"): adaptation by pseudo-labels.

A teacher labels the target training images the run has no labels for (pseudo-labels); the most
plausible `pseudo_label_keep` share of them is kept, judged by the shape prior of
engine/evaluation/selection.py (an implausible pseudo-label, e.g. a blob over the body, is the teacher's
mistake and would only be learnt). A student that starts from M_A trains `self_training_epochs`
epochs on the source training images with their truth (source replay), the kept pseudo-labelled
target images and the target images the label fraction keeps (with their truth;
engine/evaluation/label_budget.py; repeated up to the size of the target training split, as
fine-tuning repeats them, with `pseudo_label_repeat_labelled`), with the run's augmentation
recipe: a strong augmentation on the student and none on the teacher, as in FixMatch / "Noisy
Student" and the self-training baselines of domain adaptation for segmentation (Zou et al., ECCV
2018). Its result is the average of its weights at the ends of its epochs.

The teacher (`pseudo_label_teacher`): "average" (the default), the student's weight average,
refreshed after every epoch, a mean teacher at the granularity of epochs (Tarvainen & Valpola
2017): it improves as the student does and is steadier than it; "source", M_A once, before the
first epoch. With `pseudo_label_tta` (the default) the teacher labels each image from its mean
probability over test-time variants (engine/evaluation/guard.py), an ensemble's labels. Pixels the teacher
is unsure of can be left unlabelled (`pseudo_label_confidence`; off by default: measured on the
phantoms it cost the boundary, docs/adaptation.md).

Whether the result replaces M_A is the run's guard's question (engine/evaluation/guard.py), as for every
transfer method.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data.transfer import TransferData
from engine.evaluation.guard import foreground_probability, variant_probabilities
from engine.evaluation.label_budget import LabelPlan
from engine.evaluation.selection import ShapePrior
from engine.runtime import checkpoints as ckpt
from engine.runtime.device import as_batch, as_mask_batch, resolve_device
from engine.transfer.target_training import TargetTrainer, labelled_repeats
from models.loading import TranslateThenSegment
from models.losses import IGNORE_INDEX
from models.registry import segmenter_from_checkpoint
from protocol.config import RunConfig

EVAL_BATCH = 16


class PseudoLabeller:
    """Pseudo-labels of the unlabelled target training images by a teacher network.

    Per image, the teacher's foreground probability (averaged over the test-time variants of
    engine/evaluation/guard.py when `tta`: an ensemble's labels are better than one pass's); the images whose
    masks are the most plausible (the shape prior of engine/evaluation/selection.py: an implausible
    pseudo-label, e.g. a blob over the body, is the teacher's mistake and would only be learnt),
    the top `keep` share, are kept. Per pixel, where the probability lies within `confidence` of
    neither class (max(p, 1 - p) < confidence) the pixel is left unlabelled (IGNORE_INDEX):
    the student learns the teacher's sure answers, not its guesses."""

    def __init__(self, cfg: RunConfig, data: TransferData, device: torch.device):
        self.images = data.target_unlabelled_images
        self.device = device
        self.keep, self.tta, self.confidence = cfg.pseudo_label_keep, cfg.pseudo_label_tta, cfg.pseudo_label_confidence
        self.prior = ShapePrior.from_masks(data.source_train_masks)
        self.n_kept = max(1, int(round(self.keep * len(self.images)))) if len(self.images) else 0

    @torch.no_grad()
    def probabilities(self, teacher: nn.Module) -> np.ndarray:
        out = []
        generator = torch.Generator().manual_seed(0)  # the noise variant: the same for every teacher
        for start in range(0, len(self.images), EVAL_BATCH):
            images = as_batch(self.images[start:start + EVAL_BATCH], self.device)
            probability = foreground_probability(teacher, images, self.device)
            if self.tta:
                variants = variant_probabilities(teacher, images, self.device, generator)
                probability = torch.stack([probability, *variants]).mean(0)
            out.append(probability[:, 0].cpu().numpy())
        return np.concatenate(out)

    def __call__(self, teacher: nn.Module) -> tuple[np.ndarray, np.ndarray, dict]:
        """(images, masks uint8 with IGNORE_INDEX where unsure) of the kept images, and a record."""
        if self.n_kept == 0:
            return self.images, np.zeros(self.images.shape, np.uint8), {"n_candidates": 0, "n_kept": 0,
                                                                        "threshold": None}
        probability = self.probabilities(teacher)
        masks = probability >= 0.5
        plausibility = self.prior.plausibility(masks)
        order = np.sort(np.argsort(-plausibility, kind="stable")[:self.n_kept])
        labels = masks[order].astype(np.uint8)
        unsure = np.maximum(probability[order], 1 - probability[order]) < self.confidence
        labels[unsure] = IGNORE_INDEX
        record = {"n_candidates": int(len(self.images)), "n_kept": int(self.n_kept),
                  "threshold": float(plausibility[order].min()),
                  "mean_plausibility": float(plausibility[order].mean()),
                  "unlabelled_pixel_share": float(unsure.mean())}
        return self.images[order], labels, record


class SelfTrainingRun(TargetTrainer):
    """The student: the supervised engine's trainer on source + pseudo-labelled target images (plus
    the label plan's labelled ones), its epoch chosen as every transfer run's (TargetTrainer)."""

    name = "self-training"

    def __init__(self, cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, source_model: dict,
                 segmenter_path: Path):
        device = resolve_device(cfg.device)
        self.labeller = PseudoLabeller(cfg, data, device)
        teacher = segmenter_from_checkpoint(source_model).to(device)
        kept_images, kept_masks, self.pseudo_record = self.labeller(teacher)
        # Where the pseudo-labelled images sit among the training images: a refreshing teacher
        # replaces them there.
        self.pseudo_slice = slice(len(data.source_train_images), len(data.source_train_images) + len(kept_images))
        # The labelled target images the fraction keeps, with their truth: repeated as fine-tuning
        # repeats them (pseudo_label_repeat_labelled), else once each.
        labelled = labelled_repeats(plan, data) if cfg.pseudo_label_repeat_labelled else np.arange(plan.n_train)
        train_images = np.concatenate([data.source_train_images, kept_images, plan.train_images[labelled]])
        train_masks = np.concatenate([data.source_train_masks, kept_masks, plan.train_masks[labelled]])
        student = cfg.replace(model=source_model["arch"], width=source_model["arch_kwargs"]["width"],
                              init_weights=str(segmenter_path), epochs=cfg.self_training_epochs)
        super().__init__(cfg, data, plan, run_dir, source_model, student, train_images, train_masks, from_source=True)
        # The candidate of each epoch: the running average of the student's weights at the ends
        # of its epochs so far (stochastic weight averaging, Izmailov et al. 2018). Pseudo-labels
        # are noisy and a student's epochs differ by points on the target; their average does not.
        self.averaged = copy.deepcopy(ckpt.unwrap(self.model))
        self.n_averaged = 0

    # --- weight averaging, and the teacher it makes ---
    def trained_epoch(self) -> None:
        self.n_averaged += 1
        with torch.no_grad():
            for average, current in zip(self.averaged.state_dict().values(),
                                        ckpt.unwrap(self.model).state_dict().values()):
                if average.dtype.is_floating_point:
                    average.mul_((self.n_averaged - 1) / self.n_averaged).add_(current / self.n_averaged)
                else:
                    average.copy_(current)
        if self.transfer_cfg.pseudo_label_teacher == "average" and self.epoch + 1 < self.total_epochs:
            self.refresh_pseudo_labels()

    def refresh_pseudo_labels(self) -> None:
        """The weight average labels the target images for the next epoch (a mean teacher at the
        granularity of epochs: the average improves as the student does, and is steadier than it)."""
        images, masks, self.pseudo_record = self.labeller(self.averaged)
        with torch.no_grad():
            self.train_images[self.pseudo_slice] = as_batch(images, self.device)
            self.train_masks[self.pseudo_slice] = as_mask_batch(masks, self.device)

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
        if self.transfer_cfg.pseudo_label_teacher == "average" and 0 < self.n_averaged < self.total_epochs:
            self.refresh_pseudo_labels()  # the labels the interrupted run had made for this epoch
        return resumed

    def describe(self) -> str:
        return (f"{super().describe()}; {self.pseudo_record['n_kept']} of {self.pseudo_record['n_candidates']} "
                "pseudo-labelled target images")

    def extra_summary(self) -> dict[str, Any]:
        return {"pseudo_labels": self.pseudo_record}


def self_training_run(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, segmenter_path: Path,
                      source_model: dict) -> SelfTrainingRun:
    """The trainer of a self-training run: `run()` trains it alone; engine.fused trains several together."""
    return SelfTrainingRun(cfg, data, plan, run_dir, source_model, segmenter_path)
