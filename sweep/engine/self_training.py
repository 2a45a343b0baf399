"""Self-training (transfer method "self_training"): adaptation by pseudo-labels. Plain PyTorch, no Ray.

M_A, trained on the source, labels the target training images it has no labels for (the
teacher's pseudo-labels); the most plausible `pseudo_label_keep` share of them is kept, judged by
the same shape prior that selects epochs at 0 % labels (sweep/engine/selection.py: an implausible
pseudo-label, e.g. a blob over the body, is the teacher's mistake and would only be learnt). A
student that starts from M_A then trains `transfer_epochs` epochs on the source training images
with their truth, the kept pseudo-labelled target images and the target images the label fraction
keeps (with their truth), with the run's augmentation recipe: self-training with a strong
augmentation on the student and none on the teacher, as in FixMatch / "Noisy Student" and the
self-training baselines of domain adaptation for segmentation (Zou et al., ECCV 2018).

The epoch is chosen as the proposed method chooses its own, and guarded the same way: at 0 %
labels by the plausibility of the student's target validation masks, with "no adaptation" (M_A as
it is) a candidate the student must clearly beat (TargetSelection.decide), else the run falls back
to M_A and says so; with target labels by the labelled target validation split's Jaccard.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from models.registry import segmenter_from_checkpoint
from sweep.config import RunConfig
from sweep.engine import checkpoints as ckpt
from sweep.engine.data import SegmentationData
from sweep.engine.inference import foreground_masks, resolve_device
from sweep.engine.run_dir import NO_ADAPTATION, TARGET_JACCARD, TARGET_PLAUSIBILITY, RunResult
from sweep.engine.selection import ShapePrior, TargetSelection, selection_criterion
from sweep.engine.supervised import EpochCallback, Trainer
from sweep.engine.transfer_common import TranslateThenSegment, fall_back_to_source, finish_run, selection_record
from sweep.engine.transfer_data import TransferData

log = logging.getLogger(__name__)


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


class SelfTrainingRun(Trainer):
    """The student: the supervised engine's trainer on source + pseudo-labelled target images,
    its epoch chosen as a transfer run's (`select`), judged against no adaptation at the end."""

    def __init__(self, cfg: RunConfig, data: TransferData, run_dir: Path, source_model: dict,
                 segmenter_path: Path):
        self.transfer_cfg, self.transfer_data, self.source_model = cfg, data, source_model
        device = resolve_device(cfg.device)
        kept_images, kept_masks, self.pseudo_record = pseudo_labels(source_model, data, cfg.pseudo_label_keep, device)
        self.criterion = selection_criterion(cfg, data)
        on_target = self.criterion == TARGET_JACCARD
        train_images = np.concatenate([data.source_train_images, kept_images, data.target_labelled_images])
        train_masks = np.concatenate([data.source_train_masks, kept_masks, data.target_labelled_masks])
        student_data = SegmentationData(
            train_images=train_images, train_masks=train_masks,
            val_images=data.target_val_images if on_target else data.source_val_images,
            val_masks=data.target_val_masks if on_target else data.source_val_masks,
            val_frame=data.target_val_frame if on_target else data.source_val_frame,
            test_images=data.target_test_images, test_masks=data.target_test_masks, test_ids=data.target_test_ids,
            test_frame=data.target_test_frame, task=data.task, dataset=data.target_name,
            normalisation=data.normalisation, fingerprints=data.fingerprints, crop_borders=data.crop_borders,
        )
        self.val_split = "target" if on_target else "source"
        student = cfg.replace(model=source_model["arch"], width=source_model["arch_kwargs"]["width"],
                              init_weights=str(segmenter_path), epochs=cfg.transfer_epochs)
        super().__init__(student, student_data, run_dir)
        self.selection = (TargetSelection(data.source_train_masks, data.target_val_images, cfg.selection_margin)
                          if self.criterion == TARGET_PLAUSIBILITY else None)
        self.no_adaptation: dict[str, Any] | None = None
        self.best_plausibility: list[float] | None = None
        self.leading_plausibility: list[float] | None = None
        # The candidate of each epoch: the running average of the student's weights at the ends
        # of its epochs so far (stochastic weight averaging, Izmailov et al. 2018). Pseudo-labels
        # are noisy and a student's epochs differ by points on the target; their average does not.
        self.averaged = copy.deepcopy(ckpt.unwrap(self.model))
        self.n_averaged = 0

    # --- weight averaging ---
    def train_epoch(self) -> float:
        loss = super().train_epoch()
        self.n_averaged += 1
        with torch.no_grad():
            for average, current in zip(self.averaged.state_dict().values(),
                                        ckpt.unwrap(self.model).state_dict().values()):
                if average.dtype.is_floating_point:
                    average.mul_((self.n_averaged - 1) / self.n_averaged).add_(current / self.n_averaged)
                else:
                    average.copy_(current)
        return loss

    def candidate(self) -> nn.Module:
        return self.averaged

    # --- selection ---
    def select(self, metrics: dict[str, Any]) -> tuple[bool, float]:
        if self.selection is None:
            return super().select(metrics)
        plausibility = self.selection.plausibility(self.averaged, self.device)
        leader = np.array(self.leading_plausibility) if self.leading_plausibility is not None else None
        keep = self.selection.follows(plausibility, leader)
        if self.selection.leads(plausibility, leader):
            self.leading_plausibility = plausibility.tolist()
        if keep:
            self.best_plausibility = plausibility.tolist()
        metrics["target_score"] = float(plausibility.mean())
        return keep, metrics["target_score"]

    # --- resume: the selection's state travels in last.pt too ---
    def _last_state(self) -> dict[str, Any]:
        # The student itself as the network part (with_best would put the kept average there when
        # it is this epoch's), the average beside it.
        state = {**self._network_checkpoint(), "best": self.best}
        state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=ckpt.rng_state(),
                     best_val_jaccard=self.best_val, best_epoch=self.best_epoch, history=self.history,
                     duration_s=self.duration_s, no_adaptation=self.no_adaptation,
                     best_plausibility=self.best_plausibility, leading_plausibility=self.leading_plausibility,
                     averaged=ckpt.state_copy(self.averaged), n_averaged=self.n_averaged)
        return state

    def resume(self) -> bool:
        # Extending a run with more transfer epochs is a resumption, as for the proposed method.
        state = self.read_last(lambda config: {k: v for k, v in config.items() if k not in ("transfer_epochs", "epochs")})
        if state is None:
            return False
        resumed = super().resume_from(state)
        self.no_adaptation, self.best_plausibility = state["no_adaptation"], state["best_plausibility"]
        self.leading_plausibility = state["leading_plausibility"]
        self.averaged.load_state_dict(state["averaged"])
        self.n_averaged = int(state["n_averaged"])
        return resumed

    # --- the run ---
    def run(self, callbacks: Sequence[EpochCallback]) -> RunResult:
        cfg, data = self.transfer_cfg, self.transfer_data
        self.resume()
        log.info("self_training %s -> %s %s at %g %% labels on %s: %d source + %d of %d pseudo-labelled + %d labelled "
                 "target images, %d epochs from M_A, epoch chosen by %s, writing to %s", data.source_name,
                 data.target_name, data.task, data.label_fraction, self.device, len(data.source_train_images),
                 self.pseudo_record["n_kept"], self.pseudo_record["n_candidates"], data.n_labelled,
                 cfg.transfer_epochs, self.criterion, self.run_dir)
        if self.selection is not None and self.no_adaptation is None:
            model = TranslateThenSegment(segmenter_from_checkpoint(self.source_model)).to(self.device)
            plausibility = self.selection.plausibility(model, self.device)
            self.no_adaptation = {"target_score": float(plausibility.mean()), "plausibility": plausibility.tolist(),
                                  "val_jaccard": float(self.val_scorer(model.segmenter)[0].mean())}
            log.info("no adaptation (M_A on %s as it is): target plausibility %.4f", data.target_name,
                     self.no_adaptation["target_score"])
        trained = self.fit(callbacks)
        summary = self.summary()
        started = time.perf_counter()
        if summary["selected_model"] == NO_ADAPTATION:
            model, best_epoch, val_jaccard = fall_back_to_source(
                cfg, data, self.run_dir, self.source_model, self.device, "self-training: the kept student epoch",
                self.best_epoch, self.best_val, self.no_adaptation, summary["selection_decision"])
        else:
            ckpt.save_atomic(self.best, self.best_path)
            self.averaged.load_state_dict(self.best["state_dict"])
            model = TranslateThenSegment(self.averaged)
            best_epoch = self.best_epoch
            val_jaccard = next(h["val_jaccard"] for h in self.history if h["epoch"] == self.best_epoch)
        duration_s = self.duration_s + time.perf_counter() - started
        return finish_run(cfg, data, self.run_dir, model, self.device, best_epoch=best_epoch, val_jaccard=val_jaccard,
                          duration_s=duration_s, epochs_trained=trained, history=self.history, summary_extra=summary)

    def summary(self) -> dict[str, Any]:
        """What result.json adds: the pseudo-labels kept, which model was kept and why."""
        decision = None
        if self.selection is not None:
            decision = self.selection.decide(np.array(self.best_plausibility),
                                             np.array(self.no_adaptation["plausibility"]))
        return {
            **selection_record(self.criterion, decision, self.best_val, self.best_epoch, self.no_adaptation,
                               self.transfer_cfg.selection_margin),
            "val_split": self.val_split,
            "pseudo_labels": self.pseudo_record,
        }


def train_self_training(cfg: RunConfig, data: TransferData, run_dir: Path, segmenter_path: Path,
                        source_model: dict, callbacks: Sequence[EpochCallback] = ()) -> RunResult:
    if cfg.transfer_epochs < 1:
        raise ValueError(f"transfer_epochs must be at least 1, got {cfg.transfer_epochs}")
    return SelfTrainingRun(cfg, data, run_dir, source_model, segmenter_path).run(callbacks)
