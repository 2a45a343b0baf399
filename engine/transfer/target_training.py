"""The supervised engine's trainer inside a transfer run (finetune, scratch, self_training). Plain PyTorch.

What it adds to `Trainer`: the run reads only the target labels of its label plan
(engine/evaluation/label_budget.py), chooses its epoch by the plan's criterion (KeepBest), and, when it
starts from M_A, counts where it started (epoch 0, M_A as it is) as a candidate: a run that makes
things worse by its own measure returns M_A and says so. `scratch` starts from no model, so its
first epoch is its first candidate.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.segmentation import SegmentationData
from engine.data.transfer import TransferData
from engine.evaluation.label_budget import LabelPlan
from engine.evaluation.selection import KeepBest
from engine.runtime import checkpoints as ckpt
from engine.supervised import Trainer
from engine.transfer.outcome import CandidateScorer, ValidationScorer, conclude, judge, score_start, selection_record
from models.loading import TranslateThenSegment
from protocol.config import RunConfig
from protocol.run_dir import RunResult

log = logging.getLogger(__name__)


class TargetTrainer(Trainer):
    """`Trainer` on `train_images` / `train_masks`, its epoch chosen by `plan`, tested on the target."""

    name = "target training"  # how the logs name the run's kept epoch

    def __init__(self, cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, source_model: dict,
                 inner: RunConfig, train_images: np.ndarray, train_masks: np.ndarray, from_source: bool):
        self.transfer_cfg, self.transfer_data, self.plan, self.source_model = cfg, data, plan, source_model
        self.from_source = from_source
        on_target = plan.labelled_selection
        student_data = SegmentationData(
            train_images=train_images, train_masks=train_masks,
            val_images=plan.select_images if on_target else data.source_val_images,
            val_masks=plan.select_masks if on_target else data.source_val_masks,
            val_frame=plan.select_frame if on_target else data.source_val_frame,
            test_images=data.target_test_images, test_masks=data.target_test_masks, test_ids=data.target_test_ids,
            test_frame=data.target_test_frame, task=data.task, dataset=data.target_name,
            normalisation=data.normalisation, fingerprints=data.fingerprints, crop_borders=data.crop_borders,
        )
        super().__init__(inner, student_data, run_dir)
        self.val_split = "target" if on_target else "source"
        self.scores = CandidateScorer(cfg, data, plan, ValidationScorer(data, plan, self.device), self.device)
        self.keeper = KeepBest(plan.criterion, cfg.selection_margin, start_is_candidate=cfg.guard != "off")
        self.selector = self.keeper
        self.no_adaptation: dict[str, Any] | None = None  # where the run started: its score and val Jaccard

    # --- selection ---
    def evaluate(self, metrics: dict[str, Any]) -> tuple[np.ndarray, float]:
        val_jaccards, _ = super().evaluate(metrics)
        if self.scores.selection is None:
            scores = val_jaccards  # the validation pass just made is the criterion's
        else:
            scores = self.scores(TranslateThenSegment(self.candidate()))
        metrics["selection_score"] = float(np.mean(scores))
        return scores, metrics["selection_score"]

    # --- resume: the selection's state travels in last.pt too ---
    def _last_state(self) -> dict[str, Any]:
        state = super()._last_state()
        state.update(no_adaptation=self.no_adaptation, keeper=self.keeper.state_dict())
        return state

    def resume(self) -> bool:
        # Extending a run with more epochs is a resumption, as for the proposed method.
        state = self.read_last(lambda config: {k: v for k, v in config.items()
                                               if k not in ("transfer_epochs", "self_training_epochs", "epochs")})
        if state is None:
            return False
        return self.resume_from(state)

    def resume_from(self, state: dict[str, Any]) -> bool:
        resumed = super().resume_from(state)
        self.no_adaptation = state["no_adaptation"]
        self.keeper.load_state_dict(state["keeper"])
        self.selector = self.keeper
        return resumed

    # --- the run ---
    def describe(self) -> str:
        return (f"{self.transfer_cfg.method} {self.transfer_data.source_name} -> {self.transfer_data.target_name} "
                f"{self.transfer_data.task} at {self.transfer_data.label_fraction:g} % labels ({self.plan.budget} "
                f"budget: {self.plan.n_train} labelled images trained on, {self.plan.n_select} choosing)")

    def kept_model(self) -> TranslateThenSegment:
        """The kept epoch's network, loaded from self.best."""
        ckpt.unwrap(self.model).load_state_dict(self.best["state_dict"])
        return TranslateThenSegment(self.model)

    def begin(self) -> bool:
        """Resume from last.pt, or (a run from M_A whose criterion compares it) score epoch 0."""
        resumed = self.resume()
        if not resumed and self.from_source and self.keeper.compares_start:
            score_start(self, self.transfer_data.target_name, self.plan.criterion,
                        lambda model: self.val_scorer(model.segmenter)[0].mean())
        log.info("%s on %s: %d training images, %d epochs from %s, epoch chosen by %s, writing to %s",
                 self.describe(), self.device, len(self.data.train_images), self.cfg.epochs,
                 "M_A" if self.from_source else "random initialisation", self.plan.criterion, self.run_dir)
        return resumed

    def finish(self, trained: int) -> RunResult:
        """The kept epoch (or M_A, when the run's guard refuses it) on the target's test split."""
        cfg, data = self.transfer_cfg, self.transfer_data
        started = time.perf_counter()
        model = self.kept_model().to(self.device) if self.best is not None else None
        decision = judge(cfg, data, self.plan, self.keeper, model, self.source_model, self.device) \
            if self.from_source else None
        summary = {**selection_record(self.plan.criterion, decision, self.best_val, self.best_epoch,
                                      self.no_adaptation, cfg.selection_margin, self.plan, cfg.guard),
                   "val_split": self.val_split, **self.extra_summary()}
        return conclude(self, cfg, data, model, decision, summary, f"{self.name}: the kept epoch", self.plan.criterion,
                        self.duration_s + time.perf_counter() - started, trained)

    def extra_summary(self) -> dict[str, Any]:
        return {}


def labelled_repeats(plan: LabelPlan, data: TransferData) -> np.ndarray:
    """Indices into the plan's labelled training images, repeated up to the size of the target
    training split: an epoch then holds as many labelled target images at every fraction, so
    1.25 % is not starved of steps and one label is not outweighed by everything else it trains with."""
    if plan.n_train == 0:
        return np.zeros(0, np.int64)
    return np.resize(np.arange(plan.n_train), max(len(data.target_train_images), plan.n_train))


def target_trainer(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, segmenter_path: Path,
                   source_model: dict) -> TargetTrainer:
    """The trainer of a finetune (from M_A) or scratch (M_A's architecture from random
    initialisation) run on the plan's labelled target training images, both for `cfg.epochs`
    epochs: the same budget, so that neither baseline is the weaker for fewer steps
    (docs/adaptation.md). Fine-tuning with `source_replay` also trains on the source training images
    with their truth, every epoch: with few target labels, a network trained on them alone learns
    them by heart and forgets the anatomy it knew; rehearsing the source keeps it (experience
    replay, as in continual learning). `run()` trains it alone; engine.fused trains several together."""
    repeat = labelled_repeats(plan, data)
    finetune = cfg.method == "finetune"
    images, masks = plan.train_images[repeat], plan.train_masks[repeat]
    if finetune and cfg.source_replay:
        images = np.concatenate([images, data.source_train_images])
        masks = np.concatenate([masks, data.source_train_masks])
    inner = cfg.replace(model=source_model["arch"], width=source_model["arch_kwargs"]["width"],
                        init_weights=str(segmenter_path) if finetune else "")
    trainer = TargetTrainer(cfg, data, plan, run_dir, source_model, inner, images, masks, from_source=finetune)
    trainer.name = cfg.method
    return trainer
