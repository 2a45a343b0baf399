"""The proposed method's run (paper §IV-C) on engine.loop: M_A and the warmed translator trained by
three alternating steps per batch (discriminative, generative, supervised), judged and kept as
any transfer run, with the seconds each kind of step took."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from engine.data.augmentation import NONE as NO_AUGMENTATION
from engine.data.augmentation import augment
from engine.data.transfer import TransferData
from engine.evaluation.label_budget import LabelPlan
from engine.evaluation.selection import KeepBest
from engine.loop import EpochLoop
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
)
from engine.supervised import epoch_seed
from engine.transfer.outcome import (
    CandidateScorer,
    ValidationScorer,
    conclude,
    judge,
    score_start,
    selection_record,
)
from engine.transfer.proposed.diagnostics import (
    adversarial_balance,
    format_balance,
    format_losses,
    saturation_message,
    saturation_report,
    watch_saturation,
)
from engine.transfer.proposed.gan import (
    LossSums,
    SemanticAdversary,
    TranslationTrainer,
    check_finite,
    device_batches,
    paired_batches,
    set_trainable,
)
from models.loading import TranslateThenSegment, load_translator
from models.losses import build_loss
from models.registry import segmenter_from_checkpoint
from protocol.config import RunConfig
from protocol.run_dir import RunResult

log = logging.getLogger(__name__)


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
        # epoch 0) one of the candidates (engine/evaluation/selection.py, KeepBest).
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
        """An epoch's metrics from its losses, trained here or in a fused group (engine.fused.proposed)."""
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
            score_start(self, data.target_name, self.criterion, lambda model: self.validate(model)[0])
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
