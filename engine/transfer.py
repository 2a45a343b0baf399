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
- self_training: M_A's pseudo-labels on the unlabelled target images (engine/self_training.py).
- source_only: M_A applied to target images as they are (same intensity normalisation): the
  honest 0 % baseline.

finetune and scratch need target labels: at 0 % they raise `NotApplicable`, which the sweep
records as status "not_applicable", never as a number. Which target labels a run reads, and what
chooses its epoch, is its label plan (engine/label_budget.py); every method that starts from
M_A counts M_A as it is among its candidates.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from engine import checkpoints as ckpt
from engine.augmentation import NONE as NO_AUGMENTATION
from engine.augmentation import augment
from engine.device import (
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
from engine.label_budget import LabelPlan, label_plan
from engine.loop import EpochCallback, EpochLoop
from engine.selection import KeepBest
from engine.self_training import self_training_run
from engine.supervised import epoch_seed
from engine.target_training import TargetTrainer, target_trainer
from engine.transfer_common import (
    CandidateScorer,
    ValidationScorer,
    conclude,
    finish_run,
    judge,
    save_source_model_as_best,
    selection_record,
    validation_jaccard,
)
from engine.transfer_data import TransferData
from engine.translation import (
    LossSums,
    SemanticAdversary,
    TranslationTrainer,
    adversarial_balance,
    check_finite,
    device_batches,
    format_balance,
    format_losses,
    paired_batches,
    saturation_message,
    saturation_report,
    set_trainable,
    warmup_translator,
    watch_saturation,
)
from errors import UserError
from models.loading import TranslateThenSegment, load_translator
from models.losses import build_loss
from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint
from protocol.config import METHODS_NEEDING_TARGET_LABELS, TRAINER_METHODS, TRANSFER_METHODS, RunConfig
from protocol.run_dir import RunResult

__all__ = ["NotApplicable", "train_transfer", "transfer_trainer", "proposed_run", "warmup_translator",
           "check_applicable", "validation_jaccard"]

log = logging.getLogger(__name__)


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
            return _source_only(cfg, data, plan, run_dir, source_model)
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
    what engine.fused_proposed trains with others of its shape. Build it under the run's thread
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


def _source_only(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, source_model: dict) -> RunResult:
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    model = TranslateThenSegment(segmenter_from_checkpoint(source_model)).to(device)
    val_jaccard, val_on = validation_jaccard(data, plan, model, device)
    save_source_model_as_best(cfg, data, run_dir, source_model)
    log.info("source_only %s -> %s %s: M_A as it is, val Jaccard (%s) %.4f", data.source_name, data.target_name,
             data.task, val_on, val_jaccard)
    history = [{"epoch": 0, "val_jaccard": val_jaccard, "val_split": val_on}]
    return finish_run(cfg, data, run_dir, model, device, best_epoch=0, val_jaccard=val_jaccard,
                      duration_s=time.perf_counter() - started, epochs_trained=0, history=history,
                      summary_extra=plan.record())


# ---------------------------------------------------------------------------------------------
# The proposed method.


class StepClock:
    """Seconds spent in each kind of step over an epoch. On CUDA, events recorded between the
    steps are read once, at the epoch's end: reading a clock after each step would wait for the GPU."""

    def __init__(self, device: torch.device, names: Sequence[str]):
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []
        self.names = names

    def now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, name: str, start: Any, end: Any) -> None:
        self.spans.append((name, start, end))

    def seconds(self) -> dict[str, float]:
        totals = dict.fromkeys(self.names, 0.0)
        if self.cuda and self.spans:
            self.spans[-1][2].synchronize()
        for name, start, end in self.spans:
            totals[name] += start.elapsed_time(end) / 1000 if self.cuda else end - start
        return totals


STEP_CLOCKS = ("D_s", "G_s", "S_s")  # the seconds of each step kind an epoch reports


class ProposedRun(EpochLoop):
    """State of one proposed-method run: M_A, the translator, their optimisers, best-so-far.

    The training arrays live on the device for the whole run (a batch is an index, not a copy);
    the steps run under mixed precision on CUDA (bfloat16, or float16 with loss scaling) in
    channels-last layout; losses are summed on the device and read, and checked, once per epoch.
    Checkpoints follow the supervised engine's policy (ckpt.CheckpointClock, best in memory)."""

    def __init__(self, cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path, source_model: dict,
                 translator_path: Path):
        if cfg.transfer_epochs < 1:
            raise ValueError(f"transfer_epochs must be at least 1, got {cfg.transfer_epochs}")
        self.cfg, self.data, self.plan, self.run_dir = cfg, data, plan, run_dir
        self.device = device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.source_model = source_model
        translator, self.translator_payload = load_translator(translator_path)
        if self.translator_payload.get("image_size", data.image_size) != data.image_size:
            raise ValueError(f"{translator_path}: translator warmed at {self.translator_payload['image_size']} px, "
                             f"the data is {data.image_size} px")
        prepare_device(device)
        self.model = TranslateThenSegment(segmenter_from_checkpoint(source_model), translator).to(
            device, memory_format=memory_format_for(device))
        if cfg.compile:  # the parts the steps call, not the inference-time wrapper
            compile_in_place(self.model.segmenter)
            compile_in_place(self.model.translator)
        self.translation = TranslationTrainer(self.model.translator, cfg)
        self.semantic = SemanticAdversary(cfg, self.device) if cfg.w_semantic > 0 else None
        self.segmenter_optimizer = adam(self.model.segmenter.parameters(), device, lr=cfg.lr,
                                        betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.scaler = grad_scaler_for(device)
        foreground = float(data.source_train_masks.mean())
        self.loss_fn = build_loss(cfg.loss, foreground_fraction=foreground if cfg.loss == "weighted_ce" else None)
        # On the device once; masks stay uint8 until a batch is drawn (int64 would take 8x the memory).
        self.source_images = as_batch(data.source_train_images, device)
        self.target_images = as_batch(data.target_train_images, device)
        self.source_masks = as_mask_batch(data.source_train_masks, device)
        # The target labels the supervised step reads: the plan's training part of the fraction's.
        self.n_labelled = plan.n_train
        self.labelled_images = as_batch(plan.train_images, device) if self.n_labelled else None
        self.labelled_masks = as_mask_batch(plan.train_masks, device) if self.n_labelled else None
        self.validate = ValidationScorer(data, plan, device)
        self.foreground_range = ckpt.foreground_range([data.source_train_masks, plan.train_masks])
        self.start_bookkeeping(cfg.checkpoint_every_s)
        # What picks the epoch: the label plan's criterion, M_A on b as it is ("no adaptation",
        # epoch 0) one of the candidates (engine/selection.py, KeepBest).
        self.criterion = plan.criterion
        self.scores = CandidateScorer(cfg, data, plan, self.validate, device)
        self.keeper = KeepBest(plan.criterion, cfg.selection_margin, start_is_candidate=cfg.guard != "off")
        self.selector = self.keeper
        self.no_adaptation: dict[str, Any] | None = None  # its score and val Jaccard

    # --- the supervised step (the two GAN steps live in TranslationTrainer) ---
    def augmented(self, a: Tensor, a_masks: Tensor, b: Tensor | None, b_masks: Tensor | None,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The supervised step's images, augmented by the run's recipe (`generator`: the epoch's;
        None: the paper's protocol, as they are)."""
        if generator is not None:
            a, a_masks = augment(self.cfg.augmentation, a, a_masks, generator)
            if b is not None:
                b, b_masks = augment(self.cfg.augmentation, b, b_masks, generator)
        return a, a_masks, b, b_masks

    def supervised_step(self, a: Tensor, a_masks: Tensor, b: Tensor | None, b_masks: Tensor | None,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Discriminators frozen; M_A and both generators trained on the segmentation loss, on
        images augmented by the run's recipe (`generator`: the epoch's), as M_A was trained: an
        unaugmented step pulls a robust M_A back towards the source's own look."""
        translator, segmenter = self.model.translator, self.model.segmenter
        a, a_masks, b, b_masks = self.augmented(a, a_masks, b, b_masks, generator)
        set_trainable(translator.discriminator_modules(), False)
        set_trainable(translator.generator_modules(), True)
        self.translation.generator_optimizer.zero_grad(set_to_none=True)
        self.segmenter_optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device):
            losses = {"S_source": self.loss_fn(segmenter(translator.cycle_aba(a)), a_masks)}
            if b is not None:
                losses["S_target"] = self.loss_fn(segmenter(translator.translate_ba(b)), b_masks)
            total = self.cfg.w_seg * sum(losses.values())
        self.scaler.scale(total).backward()
        self.scaler.step(self.translation.generator_optimizer)
        self.scaler.step(self.segmenter_optimizer)
        self.scaler.update()
        return {name: value.detach() for name, value in losses.items()}

    def epoch_draws(self) -> tuple[list[tuple[Tensor, ...]], torch.Generator | None]:
        """What an epoch draws before its first step: the global random stream seeded by (seed,
        epoch) (MUNIT draws random styles from it: resuming is exact), the steps' index batches
        (source, target, labelled target) on the device, and the supervised step's augmentation
        generator (None without augmentation). Augmentation has a generator of its own, so that the
        paper's protocol (no augmentation) leaves every other draw where it always was."""
        cfg, data = self.cfg, self.data
        seed = epoch_seed(cfg.seed, self.epoch)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        augmentation = torch.Generator().manual_seed(seed) if cfg.augmentation != NO_AUGMENTATION else None
        # Index draws in the order the engine has always made them: every permutation of the
        # epoch first, then one labelled draw per step.
        pairs = list(paired_batches(len(data.source_train_images), len(data.target_train_images), cfg.batch_size,
                                    rng))
        labelled = [rng.integers(0, self.n_labelled, size=len(index_b)) for _, index_b in pairs] \
            if self.n_labelled else [np.zeros(0, np.int64)] * len(pairs)
        batches = [(index_a, index_b, index_l) for (index_a, index_b), index_l in zip(pairs, labelled)]
        return device_batches(batches, self.device), augmentation

    def batch(self, index_a: Tensor, index_b: Tensor, index_l: Tensor) -> tuple[Tensor, ...]:
        """A step's source images and masks, target images, and labelled target images and masks
        (None, None without target labels)."""
        labelled_b = labelled_masks = None
        if self.n_labelled:
            labelled_b, labelled_masks = self.labelled_images[index_l], self.labelled_masks[index_l].long()
        return (self.source_images[index_a], self.source_masks[index_a].long(), self.target_images[index_b],
                labelled_b, labelled_masks)

    # --- one epoch's batches and steps (engine.loop.EpochSteps) ---
    def epoch_batches(self) -> list[tuple[Tensor, ...]]:
        self.model.train()
        batches, self.epoch_augmentation = self.epoch_draws()
        self.epoch_sums = LossSums()
        self.epoch_clock = StepClock(self.device, STEP_CLOCKS + (("SEM_s",) if self.semantic else ()))
        return batches

    def training_step(self, batch: tuple[Tensor, ...]) -> None:
        """The three steps (and the semantic adversary's, when on) on one batch of indices."""
        clock = self.epoch_clock
        a, a_masks, b, labelled_b, labelled_masks = self.batch(*batch)
        start = clock.now()
        record = self.translation.discriminative_step(a, b)
        after_d = clock.now()
        record.update(self.translation.generative_step(a, b))
        after_g = clock.now()
        record.update(self.supervised_step(a, a_masks, labelled_b, labelled_masks, self.epoch_augmentation))
        after_s = clock.now()
        clock.add("D_s", start, after_d)
        clock.add("G_s", after_d, after_g)
        clock.add("S_s", after_g, after_s)
        if self.semantic is not None:
            record.update(self.semantic.step(self.model.translator, self.model.segmenter,
                                             self.translation.generator_optimizer, b, a_masks))
            clock.add("SEM_s", after_s, clock.now())
        self.epoch_sums.add(record)

    def epoch_end(self, started: float) -> dict[str, Any]:
        return self.trained_epoch(self.epoch_losses_of(self.epoch_sums, self.epoch_clock.seconds()))

    def epoch_losses_of(self, sums: LossSums, seconds: dict[str, float]) -> dict[str, float]:
        """An epoch's mean losses (its one host sync), checked finite, and its seconds per step kind."""
        losses = sums.means()
        check_finite(losses, f"{self.run_dir}: proposed epoch {self.epoch + 1}")
        return {**losses, **seconds}

    # --- checkpoints ---
    def checkpoint(self) -> dict[str, Any]:
        """A segmenter checkpoint (load_segmenter reads it) that also carries the translator;
        on target images the pair must be applied as M_A(G_BA(b)), see `load_transfer_model`."""
        state = ckpt.network_checkpoint(self.model.segmenter, self.source_model["arch"],
                                        self.source_model["arch_kwargs"], self.cfg.to_dict(), self.data.task,
                                        self.data.image_size, self.data.normalisation, self.epoch,
                                        self.data.fingerprints, crop_borders=self.data.crop_borders,
                                        train_foreground_range=self.foreground_range)
        state["translator"] = {
            "translator": self.translator_payload["translator"], "kwargs": self.translator_payload["kwargs"],
            "state_dict": ckpt.state_copy(self.model.translator),
        }
        state["inference"] = "segmenter(translator.translate_ba(image))"
        return state

    def _last_state(self) -> dict[str, Any]:
        state = ckpt.with_best(self.checkpoint, self.best, self.epoch)
        state.update(segmenter_optimizer=self.segmenter_optimizer.state_dict(),
                     translation_optimizers=self.translation.state_dict(), scaler=self.scaler.state_dict(),
                     translator_training_state=self.model.translator.training_state(),
                     rng=ckpt.rng_state(), best_val_jaccard=self.best_val, best_epoch=self.best_epoch,
                     history=self.history, duration_s=self.duration_s, no_adaptation=self.no_adaptation,
                     keeper=self.keeper.state_dict(),
                     semantic=self.semantic.state_dict() if self.semantic is not None else None)
        return state

    def load_model_state(self, state: dict) -> None:
        self.model.segmenter.load_state_dict(state["state_dict"])
        self.model.translator.load_state_dict(state["translator"]["state_dict"])

    def resume(self) -> bool:
        # Extending a run with more transfer epochs is a resumption, like `epochs` for supervised runs.
        state = self.read_last(lambda config: {k: v for k, v in config.items() if k != "transfer_epochs"})
        if state is None:
            return False
        self.load_model_state(state)
        self.segmenter_optimizer.load_state_dict(state["segmenter_optimizer"])
        self.translation.load_state_dict(state["translation_optimizers"])
        self.model.translator.load_training_state(state["translator_training_state"])
        self.restore_progress(state)
        self.no_adaptation = state["no_adaptation"]
        self.keeper.load_state_dict(state["keeper"])
        if self.semantic is not None:
            self.semantic.load_state_dict(state["semantic"])
        log.info("resuming %s from epoch %d", self.run_dir, self.epoch)
        return True

    # --- the loop's hooks (engine/loop.py) ---
    @property
    def total_epochs(self) -> int:
        return self.cfg.transfer_epochs

    def trained_epoch(self, losses: dict[str, float]) -> dict[str, Any]:
        """An epoch's metrics from its losses, trained here or in a fused group (engine.fused_proposed)."""
        self.epoch_losses = losses
        self.epoch_balance = adversarial_balance(losses, self.cfg.w_adv)
        return {**losses, **self.epoch_balance}

    def evaluate(self, metrics: dict[str, Any]) -> tuple[np.ndarray, float]:
        if self.scores.selection is None:  # the criterion is the validation pass itself: score it once
            per_image = self.validate.per_image(self.model)
            val_jaccard, val_on = float(per_image.mean()), self.validate.split
        else:
            val_jaccard, val_on = self.validate(self.model)
            per_image = self.scores(self.model)
        score = float(per_image.mean())
        metrics.update(val_jaccard=val_jaccard, val_split=val_on)
        if self.scores.selection is not None:
            metrics["target_score"] = score
        metrics["selection_score"] = score
        return per_image, score

    def snapshot(self) -> dict[str, Any]:
        return self.checkpoint()

    def best_metrics(self) -> dict[str, Any]:
        return {"best_selection_score": self.best_val, "best_epoch": self.best_epoch}

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        data, losses, score = self.data, self.epoch_losses, metrics["selection_score"]
        chosen_by = f" | target plausibility {score:.4f} (kept {self.best_val:.4f} @ {self.best_epoch})" \
            if "target_score" in metrics else f" (best {self.best_val:.4f} @ {self.best_epoch})"
        log.info("proposed %s %g%% epoch %d/%d: %s | %s | val Jaccard (%s) %.4f%s | D %.1fs G %.1fs S %.1fs, "
                 "%.1fs", data.task, data.label_fraction, self.epoch, self.cfg.transfer_epochs,
                 format_losses({k: v for k, v in losses.items() if not k.endswith("_s")}),
                 format_balance(self.epoch_balance), metrics["val_split"], metrics["val_jaccard"], chosen_by,
                 losses["D_s"], losses["G_s"], losses["S_s"], metrics["epoch_s"])

    def after_epoch(self) -> None:
        watch_saturation(self.history, "transfer")

    # --- the run ---
    def score_no_adaptation(self) -> dict[str, Any]:
        """The "no adaptation" candidate (epoch 0): M_A as trained on the source, applied to b as it is."""
        model = TranslateThenSegment(segmenter_from_checkpoint(self.source_model)).to(self.device)
        scores = self.scores(model)
        self.keeper.start(scores)
        return {"target_score": float(scores.mean()), "val_jaccard": self.validate(model)[0]}

    def describe(self) -> str:
        return f"proposed {self.data.task} {self.data.target_name} {self.data.label_fraction:g} % " \
               f"repetition {self.cfg.repetition}"

    def begin(self) -> bool:
        """Resume from last.pt if there is one, and score M_A as it is (the "no adaptation"
        candidate) on a fresh start; whether it resumed."""
        cfg, data = self.cfg, self.data
        resumed = self.resume()
        log.info("proposed %s -> %s %s at %g %% labels on %s: %d source / %d target (%d labelled, %d of them "
                 "trained on, %s budget) training images, %d epochs after a %d-epoch warm-up, epoch chosen by %s, "
                 "writing to %s", data.source_name, data.target_name, data.task, data.label_fraction, self.device,
                 len(data.source_train_images), len(data.target_train_images), data.n_labelled, self.n_labelled,
                 self.plan.budget, cfg.transfer_epochs, self.translator_payload.get("warmup_epochs", 0),
                 self.criterion, self.run_dir)
        if self.no_adaptation is None and self.keeper.compares_start:
            self.no_adaptation = self.score_no_adaptation()
            self.best_val = self.no_adaptation["target_score"]
            log.info("no adaptation (M_A on %s as it is): %s %.4f", data.target_name, self.criterion,
                     self.no_adaptation["target_score"])
        return resumed

    def finish(self, trained: int) -> RunResult:
        """The kept epoch (or M_A as it is, when the run's guard refuses it) on the test split."""
        cfg, data = self.cfg, self.data
        if self.best is not None:
            self.load_model_state(self.best)
        decision = judge(cfg, data, self.plan, self.keeper, self.model if self.best is not None else None,
                         self.source_model, self.device)
        summary = self.summary(decision)
        return conclude(self, cfg, data, self.model, decision, summary, "proposed: the kept adapted epoch",
                        self.criterion, self.duration_s, trained, sample_translator=self.model.translator)

    def summary(self, decision) -> dict[str, Any]:
        """What result.json adds for the proposed method: which model was kept and why, and whether
        the discriminators saturated during the warm-up or the transfer epochs."""
        saturation = {phase: report for phase, report in (
            ("warmup", self.translator_payload.get("saturation")),
            ("transfer", saturation_report(self.history, "transfer"))) if report}
        for report in saturation.values():
            log.warning(saturation_message(report))
        return {
            **selection_record(self.criterion, decision, self.best_val, self.best_epoch, self.no_adaptation,
                               self.cfg.selection_margin, self.plan, self.cfg.guard),
            "discriminators_saturated": bool(saturation),
            "saturation": saturation,
        }

