"""Cross-dataset transfer from a labelled source A (JSRT) to a target B: the paper's proposed
method (§IV-C) and the baselines it is judged against.

Methods (protocol.config.TRANSFER_METHODS):
- proposed: translator warmed up alone (`warmup_translator`, shared by every task and fraction),
  then three alternating steps per batch: discriminative (generators frozen), generative
  (discriminators frozen), supervised (discriminators frozen; M_A fine-tuned on A -> B -> A
  images with A labels and on G_BA(b) with the B labels the fraction keeps, back-propagating
  into both generators). Inference on b: M_A(G_BA(b)).
- finetune: M_A fine-tuned on the labelled target images.
- scratch: M_A's architecture from random initialisation on the labelled target images.
- self_training: M_A's pseudo-labels on the unlabelled target images (engine/transfer/self_training.py).
- source_only: M_A applied to target images as they are (same intensity normalisation): the
  honest 0 % baseline.

finetune and scratch need target labels: at 0 % they raise `NotApplicable`, which the sweep
records as status "not_applicable", never as a number. Which target labels a run reads, and what
chooses its epoch, is its label plan (engine/evaluation/label_budget.py); every method that starts from
M_A counts M_A as it is among its candidates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from engine.data.transfer import TransferData
from engine.evaluation.label_budget import LabelPlan, label_plan
from engine.loop import EpochCallback
from engine.runtime.device import (
    torch_threads,
)
from engine.transfer.proposed.run import ProposedRun
from engine.transfer.self_training import self_training_run
from engine.transfer.source_only import source_only_run
from engine.transfer.target_training import TargetTrainer, target_trainer
from errors import UserError
from models.registry import read_segmenter_checkpoint
from protocol.config import METHODS_NEEDING_TARGET_LABELS, TRAINER_METHODS, TRANSFER_METHODS, RunConfig
from protocol.run_dir import RunResult


class NotApplicable(Exception):
    """The method cannot run in this cell of the grid; the sweep records status "not_applicable"."""


def check_applicable(cfg: RunConfig, data: TransferData) -> None:
    """Raise NotApplicable for the cells of the grid where `cfg.method` has nothing to run on."""
    if cfg.method not in TRANSFER_METHODS:
        raise ValueError(f"unknown transfer method {cfg.method!r}; choose from {', '.join(TRANSFER_METHODS)}")
    if not data.target_has_labels and data.label_fraction > 0:
        raise NotApplicable(f"{data.target_name} has no {data.task} labels, so {data.label_fraction:g} % of them "
                            "cannot be kept; only 0 % (qualitative overlays) applies")
    if cfg.method in METHODS_NEEDING_TARGET_LABELS and data.n_labelled == 0:
        raise NotApplicable(f"{cfg.method} trains on labelled {data.target_name} images and "
                            f"{data.label_fraction:g} % of the {data.task} labels leaves none")


def train_transfer(cfg: RunConfig, data: TransferData, run_dir: str | Path, segmenter_checkpoint: str | Path,
                   translator_checkpoint: str | Path | None = None,
                   callbacks: Sequence[EpochCallback] = ()) -> RunResult:
    """One transfer run of `cfg.method` into `run_dir` (same layout as a supervised run, plus
    `translations/` for the proposed method). `segmenter_checkpoint` is M_A, trained on the
    source; `translator_checkpoint` (proposed only) comes from `warmup_translator`."""
    segmenter_checkpoint, source_model, run_dir, plan = _prepare(cfg, data, run_dir, segmenter_checkpoint,
                                                                 translator_checkpoint)
    with torch_threads(cfg.num_threads):
        if cfg.method in TRAINER_METHODS:
            return _trainer(cfg, data, plan, run_dir, segmenter_checkpoint, source_model).run(callbacks)
        if cfg.method == "source_only":
            return source_only_run(cfg, data, plan, run_dir, source_model)
        return ProposedRun(cfg, data, plan, run_dir, source_model, Path(translator_checkpoint)).run(callbacks)


def transfer_trainer(cfg: RunConfig, data: TransferData, run_dir: str | Path,
                     segmenter_checkpoint: str | Path) -> TargetTrainer:
    """A finetune, scratch or self-training run as the `Trainer` that `train_transfer` would run
    alone, after its checks and label plan: what engine.fused trains with others of its shape.
    Build it under the run's thread count (engine.fused does)."""
    if cfg.method not in TRAINER_METHODS:
        raise ValueError(f"only {', '.join(TRAINER_METHODS)} train as a Trainer; got {cfg.method!r}")
    segmenter_checkpoint, source_model, run_dir, plan = _prepare(cfg, data, run_dir, segmenter_checkpoint)
    return _trainer(cfg, data, plan, run_dir, segmenter_checkpoint, source_model)


def proposed_run(cfg: RunConfig, data: TransferData, run_dir: str | Path, segmenter_checkpoint: str | Path,
                 translator_checkpoint: str | Path) -> "ProposedRun":
    """A proposed-method run as `train_transfer` would run it, after its checks and label plan:
    what engine.fused.proposed trains with others of its shape. Build it under the run's thread
    count (engine.fused does)."""
    if cfg.method != "proposed":
        raise ValueError(f"proposed_run builds the proposed method; got {cfg.method!r}")
    segmenter_checkpoint, source_model, run_dir, plan = _prepare(cfg, data, run_dir, segmenter_checkpoint,
                                                                 translator_checkpoint)
    return ProposedRun(cfg, data, plan, run_dir, source_model, Path(translator_checkpoint))


def _trainer(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, segmenter_checkpoint: Path,
             source_model: dict) -> TargetTrainer:
    if cfg.method == "self_training":
        return self_training_run(cfg, data, plan, run_dir, segmenter_checkpoint, source_model)
    return target_trainer(cfg, data, plan, run_dir, segmenter_checkpoint, source_model)


def _prepare(cfg: RunConfig, data: TransferData, run_dir: str | Path, segmenter_checkpoint: str | Path,
             translator_checkpoint: str | Path | None = None) -> tuple[Path, dict, Path, LabelPlan]:
    """What every transfer run checks and reads first: that the cell applies, the data's size,
    M_A (its task, size, intensities and source split), the proposed method's translator; its run
    directory and label plan."""
    check_applicable(cfg, data)
    if cfg.image_size != data.image_size:
        raise ValueError(f"{data.target_name}: data is {data.image_size} px "
                         f"but the config asks for {cfg.image_size} px")
    segmenter_checkpoint = Path(segmenter_checkpoint)
    source_model = read_segmenter_checkpoint(segmenter_checkpoint)
    _check_source_model(segmenter_checkpoint, source_model, data)
    check_source_split(segmenter_checkpoint, source_model, cfg, data)
    if cfg.method == "proposed" and translator_checkpoint is None:
        raise ValueError("the proposed method needs a warmed translator checkpoint (warmup_translator)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return segmenter_checkpoint, source_model, run_dir, label_plan(cfg, data)


def _check_source_model(path: Path, checkpoint: dict, data: TransferData) -> None:
    if checkpoint["task"] != data.task:
        raise UserError(f"{path}: M_A was trained for {checkpoint['task']!r}, this run transfers {data.task!r}")
    if checkpoint["image_size"] != data.image_size:
        raise UserError(f"{path}: M_A was trained at {checkpoint['image_size']} px, the data is {data.image_size} px")
    if checkpoint["normalisation"] != data.normalisation:
        raise UserError(f"{path}: M_A expects {checkpoint['normalisation']} intensities, the data has "
                        f"{data.normalisation}")


def check_source_split(path: Path, checkpoint: dict, cfg: RunConfig, data: TransferData) -> None:
    """M_A must be the U-Net of fold `repetition % n_folds` (same seed) on the same source data.
    Any other M_A may have trained on this run's source validation images, on which the epoch
    of a 0 %-label run is chosen. A checkpoint that does not record its data is refused: what
    it trained on cannot be checked, and a warning would not keep its number out of a table."""
    trained = checkpoint.get("config") or {}
    recorded = checkpoint.get("data") or {}
    fold = cfg.repetition % cfg.n_folds
    needed = f"fold {fold} of {cfg.n_folds} (seed {cfg.seed}) on {data.source_name} data " \
             f"{data.fingerprints.get(data.source_name, 'unknown')}"
    if data.source_name not in recorded:
        raise UserError(f"{path}: M_A does not record the data it was trained on (written before cxrsweep "
                        f"recorded it), so its training images cannot be checked; repetition {cfg.repetition} "
                        f"needs the U-Net of {needed}: train it with `cxrsweep train --model unet --task "
                        f"{data.task} --fold {fold}`, or leave out --segmenter")
    have = f"fold {trained.get('fold')} of {trained.get('n_folds')} (seed {trained.get('seed')}) on " \
           f"{data.source_name} data {recorded[data.source_name]}"
    if have != needed:
        raise UserError(f"{path}: M_A was trained on {have}, but repetition {cfg.repetition} needs the U-Net of "
                        f"{needed}; its training images could be this run's source validation images")
