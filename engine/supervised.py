"""Supervised training of one segmentation network: the paper's protocol (§V-B).

Adam (lr 1e-4, weight decay 5e-4, betas 0.9 / 0.999), batch 4, cross-entropy; after every
epoch the second-validation fold picks the best epoch, whose weights are kept in memory (where
the network lives) and evaluated per image on the test fold at the end. `checkpoints/last.pt` (network,
optimiser, random state, best weights) is written at most every `cfg.checkpoint_every_s` seconds
and after the last epoch; a run directory that holds one is resumed from it and ends exactly
where an uninterrupted run would (CPU). `best.pt` and the overlays are written once, at the end.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from engine.data.augmentation import augment
from engine.data.segmentation import SegmentationData
from engine.evaluation.scoring import SplitScorer, predict_and_score
from engine.loop import EpochCallback, EpochLoop, HighestMean, Selector, TrainingDiverged
from engine.runtime import checkpoints as ckpt
from engine.runtime.device import (
    adam,
    as_batch,
    as_mask_batch,
    autocast_for,
    compile_in_place,
    grad_scaler_for,
    memory_format_for,
    prepare_device,
    resolve_device,
    torch_threads,
)
from models.losses import build_loss
from models.registry import build_segmenter
from protocol.config import RunConfig
from protocol.run_dir import RunResult, write_test_outputs

log = logging.getLogger(__name__)

NUM_CLASSES = 2  # background + the task's structure
IN_CHANNELS = 1


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's shuffle and augmentation: a function of (seed, epoch) only, so resuming is exact."""
    return (seed * 1_000_003 + epoch) % (2**63)


def arch_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return {"width": cfg.width, "in_channels": IN_CHANNELS, "num_classes": NUM_CLASSES}


def check_finite_loss(trainer: "Trainer", loss: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"{trainer.run_dir}: the training loss of epoch {trainer.epoch + 1} is {loss}; "
                               "the run diverged")


class Trainer(EpochLoop):
    """The state of one run: network, optimiser, tensors on the device, best-so-far bookkeeping."""

    def __init__(self, cfg: RunConfig, data: SegmentationData, run_dir: Path):
        if cfg.image_size != data.image_size:
            raise ValueError(f"{data.dataset}: data is {data.image_size} px "
                             f"but the config asks for {cfg.image_size} px")
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        model = build_segmenter(cfg.model, **arch_kwargs(cfg))
        if cfg.init_weights:
            ckpt.load_init_weights(model, cfg.init_weights)
        prepare_device(self.device)
        self.memory_format = memory_format_for(self.device)
        self.model = model.to(self.device, memory_format=self.memory_format)
        if cfg.compile:
            compile_in_place(self.model)
        self.optimizer = adam(self.model.parameters(), self.device, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              betas=(cfg.beta1, cfg.beta2))
        self.scaler = grad_scaler_for(self.device)
        self.loss_fn = build_loss(cfg.loss,
                                  foreground_fraction=data.foreground_fraction if cfg.loss == "weighted_ce" else None)
        self.train_images = as_batch(data.train_images, self.device)
        self.train_masks = as_mask_batch(data.train_masks, self.device)
        # The validation split stays on the device too, and is scored there (engine/evaluation/scoring.py).
        self.val_scorer = SplitScorer(data.val_images, data.val_masks, data.val_frame, self.device)
        self.foreground_range = ckpt.foreground_range([data.train_masks])
        # Bookkeeping carried across resumes.
        self.start_bookkeeping(cfg.checkpoint_every_s)
        self.selector: Selector = HighestMean()

    # --- checkpoints ---
    def candidate(self) -> nn.Module:
        """The network an epoch is judged by and, when kept, saved as: the one being trained (a
        subclass may judge another, e.g. an average of its weights)."""
        return self.model

    def _network_checkpoint(self, model: nn.Module | None = None) -> dict[str, Any]:
        return ckpt.network_checkpoint(model or self.model, self.cfg.model, arch_kwargs(self.cfg), self.cfg.to_dict(),
                                       self.data.task, self.data.image_size, self.data.normalisation, self.epoch,
                                       self.data.fingerprints, crop_borders=self.data.crop_borders,
                                       train_foreground_range=self.foreground_range)

    def _last_state(self) -> dict[str, Any]:
        state = ckpt.with_best(self._network_checkpoint, self.best, self.epoch)
        state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), rng=ckpt.rng_state(),
                     best_val_jaccard=self.best_val, best_epoch=self.best_epoch, history=self.history,
                     duration_s=self.duration_s)
        return state

    def resume(self) -> bool:
        state = self.read_last()
        return state is not None and self.resume_from(state)

    # --- around the loop: what a run does before its first epoch and after its last ---
    def begin(self) -> bool:
        """Get ready to train (here: resume from last.pt if there is one); whether it resumed."""
        return self.resume()

    def finish(self, epochs_trained: int) -> RunResult:
        """The run's result once its epochs are trained (here: the kept epoch on the test split)."""
        return self.evaluate_best(epochs_trained)

    def describe(self) -> str:
        return f"{self.cfg.model} {self.cfg.task} fold {self.cfg.fold}"

    def resume_from(self, state: dict[str, Any]) -> bool:
        ckpt.unwrap(self.model).load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.restore_progress(state)
        self.selector = HighestMean(self.best_val)
        log.info("resuming %s from epoch %d (best val Jaccard %.4f at epoch %d)",
                 self.run_dir, self.epoch, self.best_val, self.best_epoch)
        return True

    # --- one epoch's batches and steps (engine.loop.EpochSteps) ---
    def epoch_batches(self) -> list[torch.Tensor]:
        """The epoch's shuffle, seeded by (seed, epoch); its generator then draws the augmentation."""
        self.model.train()
        self.epoch_generator = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.epoch))
        order = torch.randperm(len(self.train_images), generator=self.epoch_generator).to(self.device,
                                                                                         non_blocking=True)
        # Summed on the device: one host sync per epoch, not per step.
        self.epoch_loss_sum = torch.zeros((), device=self.device)
        return list(order.split(self.cfg.batch_size))

    def training_step(self, index: torch.Tensor) -> None:
        images, masks = self.train_images[index], self.train_masks[index].long()
        images, masks = augment(self.cfg.augmentation, images, masks, self.epoch_generator)
        images = images.contiguous(memory_format=self.memory_format)
        with autocast_for(self.device):
            loss = self.loss_fn(self.model(images), masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.epoch_loss_sum += loss.detach() * len(index)

    def epoch_end(self, started: float) -> dict[str, Any]:
        loss = float(self.epoch_loss_sum) / len(self.train_images)
        self.trained_epoch()
        train_s = time.perf_counter() - started
        check_finite_loss(self, loss)
        return {"train_loss": loss, "train_s": train_s,
                "train_images_per_s": len(self.data.train_images) / max(train_s, 1e-9)}

    def trained_epoch(self) -> None:
        """After an epoch's steps, before it is judged (a fused group calls it for each member too):
        nothing here; self-training updates its weight average."""

    # --- the loop's hooks (engine/loop.py) ---
    @property
    def total_epochs(self) -> int:
        return self.cfg.epochs

    def evaluates(self, epoch: int) -> bool:
        return epoch % max(self.cfg.eval_every, 1) == 0 or epoch == self.cfg.epochs

    def evaluate(self, metrics: dict[str, Any]) -> tuple[np.ndarray, float]:
        """Validation Jaccard and Dice of the epoch's candidate; the selection reads the per-image
        Jaccards (a subclass may score otherwise, and add to `metrics`)."""
        jaccards, dices = self.val_scorer(self.candidate())
        metrics["val_jaccard"], metrics["val_dice"] = float(jaccards.mean()), float(dices.mean())
        return jaccards, metrics["val_jaccard"]

    def snapshot(self) -> dict[str, Any]:
        return self._network_checkpoint(self.candidate())

    def best_metrics(self) -> dict[str, Any]:
        return {"best_val_jaccard": self.best_val, "best_epoch": self.best_epoch}

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        cfg = self.cfg
        log.info("%s %s fold %d epoch %d/%d: loss %.4f, val Jaccard %s (best %.4f @ %d), %.1fs",
                 cfg.model, cfg.task, cfg.fold, self.epoch, cfg.epochs, metrics["train_loss"],
                 f"{metrics['val_jaccard']:.4f}" if "val_jaccard" in metrics else "-",
                 self.best_val, self.best_epoch, metrics["epoch_s"])

    def evaluate_best(self, epochs_trained: int) -> RunResult:
        started = time.perf_counter()
        ckpt.save_atomic(self.best, self.best_path)
        ckpt.unwrap(self.model).load_state_dict(self.best["state_dict"])
        data = self.data
        # Scored in each image's whole frame when the images are content crops.
        predictions, jaccards, dices = predict_and_score(self.model, data.test_images, data.test_masks,
                                                         data.test_frame, self.device)
        return write_test_outputs(self.run_dir, self.cfg, data.test_ids, data.test_images, predictions,
                                  data.test_masks, jaccards, dices, best_epoch=self.best_epoch,
                                  val_jaccard=self.best_val, duration_s=self.duration_s, device=self.device,
                                  epochs_trained=epochs_trained, history=self.history, started=started)


def train_supervised(cfg: RunConfig, data: SegmentationData, run_dir: Path,
                     callbacks: Sequence[EpochCallback] = ()) -> RunResult:
    """Train `cfg.model` on `data`, pick the best epoch on the validation images, evaluate it on the test images."""
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {cfg.epochs}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with torch_threads(cfg.num_threads):
        trainer = Trainer(cfg, data, run_dir)
        resumed = trainer.begin()
        threads = f", {torch.get_num_threads()} threads" if trainer.device.type == "cpu" else ""
        log.info("%s %s %s on %s%s: %d train / %d val / %d test images at %d px, %d epochs, writing to %s",
                 "resuming" if resumed else "training", cfg.model, cfg.task, trainer.device, threads,
                 len(data.train_images), len(data.val_images), len(data.test_images), data.image_size, cfg.epochs,
                 run_dir)
        return trainer.finish(trainer.fit(callbacks))
