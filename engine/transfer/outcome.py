"""What every transfer method shares: the model applied to target images, its validation, and the
files a run leaves (test outputs, translation samples, best.pt of M_A as it is). Plain PyTorch."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from data_io.preprocess import preprocessing_record
from engine.data.transfer import TransferData
from engine.evaluation.guard import HarmGuard, SourceSide
from engine.evaluation.label_budget import LabelPlan
from engine.evaluation.scoring import SplitScorer, predict_and_score
from engine.evaluation.selection import Decision, KeepBest, TargetSelection
from engine.runtime import checkpoints as ckpt
from engine.transfer.proposed.diagnostics import save_translation_samples
from models.loading import TranslateThenSegment
from models.registry import segmenter_from_checkpoint
from models.translators.base import Translator
from protocol.config import RunConfig
from protocol.run_dir import (
    ADAPTED,
    FIXED_SCHEDULE,
    NO_ADAPTATION,
    TARGET_PLAUSIBILITY,
    TRANSLATIONS_DIR,
    RunResult,
    best_checkpoint_path,
    write_test_outputs,
)

log = logging.getLogger(__name__)


N_TRANSLATION_SAMPLES = 4


class ValidationScorer:
    """Per-image Jaccard of a transfer run's labelled selection images (`plan`: the held-back part
    of its own labels, or the paper's labelled target validation split) when it has any, else of
    the source validation split (through A -> B -> A when there is a translator). Never the test
    split, never a target label outside the plan. The split goes to the device once; each call
    scores the model as it is now."""

    def __init__(self, data: TransferData, plan: LabelPlan, device: torch.device):
        self.on_target = plan.labelled_selection
        self.split = "target" if self.on_target else "source"
        if self.on_target:
            self.scorer = SplitScorer(plan.select_images, plan.select_masks, plan.select_frame, device)
        else:
            self.scorer = SplitScorer(data.source_val_images, data.source_val_masks, data.source_val_frame, device)

    def per_image(self, model: TranslateThenSegment) -> np.ndarray:
        return self.scorer(model if self.on_target else SourceSide(model))[0]

    def __call__(self, model: TranslateThenSegment) -> tuple[float, str]:
        return float(self.per_image(model).mean()), self.split


class CandidateScorer:
    """Per-image scores of a candidate model by its run's selection criterion: plausibility of its
    masks on the unlabelled target validation images (TargetSelection), or the Jaccard of
    `validate` (ValidationScorer)."""

    def __init__(self, cfg: RunConfig, data: TransferData, plan: LabelPlan, validate: ValidationScorer,
                 device: torch.device):
        self.device, self.validate = device, validate
        self.selection = (TargetSelection(data.source_train_masks, data.target_val_images, cfg.selection_margin)
                          if plan.criterion == TARGET_PLAUSIBILITY else None)

    def __call__(self, model: TranslateThenSegment) -> np.ndarray:
        if self.selection is not None:
            return self.selection.plausibility(model, self.device)
        return self.validate.per_image(model)


def validation_jaccard(data: TransferData, plan: LabelPlan, model: TranslateThenSegment,
                       device: torch.device) -> tuple[float, str]:
    """One validation pass (ValidationScorer) for a run that scores once."""
    return ValidationScorer(data, plan, device)(model)


def finish_run(cfg: RunConfig, data: TransferData, run_dir: Path, model: TranslateThenSegment, device: torch.device,
               best_epoch: int, val_jaccard: float, duration_s: float, epochs_trained: int,
               history: list[dict], summary_extra: dict | None = None,
               sample_translator: Translator | None = None) -> RunResult:
    """Evaluate `model` on the target test split and write the run's test outputs
    (`write_test_outputs`; `summary_extra` joins result.json). Translation samples show
    `sample_translator`, by default the model's own (a run that fell back to no adaptation still
    shows what it rejected)."""
    started = time.perf_counter()
    # Scored in each image's whole frame when the images are content crops; a task the target
    # does not label (heart / clavicles on Montgomery) gives overlays for the eye, no numbers.
    predictions, jaccards, dices = predict_and_score(model, data.target_test_images, data.target_test_masks,
                                                     data.target_test_frame, device)
    sample_translator = sample_translator or model.translator
    if sample_translator is not None:
        save_translation_samples(sample_translator, data.source_val_images, data.target_test_images,
                                 Path(run_dir) / TRANSLATIONS_DIR, n=N_TRANSLATION_SAMPLES)
    return write_test_outputs(run_dir, cfg, data.target_test_ids, data.target_test_images, predictions,
                              data.target_test_masks, jaccards, dices, best_epoch=best_epoch, val_jaccard=val_jaccard,
                              duration_s=duration_s, device=device, epochs_trained=epochs_trained, history=history,
                              started=started, summary_extra=summary_extra)


def save_source_model_as_best(cfg: RunConfig, data: TransferData, run_dir: Path, source_model: dict,
                              **extra: Any) -> None:
    """best.pt of a run whose model is M_A as it is (`source_only`, or a proposed run that fell
    back to no adaptation): M_A's weights with this run's config, the data it saw (source and
    target, by content) and how the target images were prepared."""
    ckpt.save_atomic({**source_model, "config": cfg.to_dict(), "data": data.fingerprints,
                      "preprocessing": preprocessing_record(data.crop_borders), **extra},
                     best_checkpoint_path(run_dir))


def judge(cfg: RunConfig, data: TransferData, plan: LabelPlan, keeper: KeepBest,
          adapted: TranslateThenSegment | None, source_model: dict, device: torch.device) -> Decision | None:
    """Whether `adapted`, what the run ends with, replaces M_A as it is (None: no comparison, the
    result stands; `adapted` None: no trained epoch beat M_A by the run's own criterion, which
    keeps M_A): by the run's guard (RunConfig.guard). "harm": unless engine.evaluation.guard.HarmGuard finds
    evidence of harm; "strict": only when its selection criterion shows it clearly better
    (KeepBest.decide); "off": always."""
    if cfg.guard == "off":
        return None
    if adapted is None:
        return Decision(keep_adaptation=False, mean_gain=0.0, lower_bound=0.0,
                        rule=f"no trained epoch beat M_A by {keeper.criterion}")
    if cfg.guard == "strict":
        decision = keeper.decide()
        if decision is not None:
            decision.rule = "clearly better" if decision.keep_adaptation else "not clearly better"
        return decision
    m_a = TranslateThenSegment(segmenter_from_checkpoint(source_model)).to(device)
    decision = HarmGuard(cfg, data, plan, device).decide(adapted, m_a)
    if decision.keep_adaptation:
        found = "; ".join(f"{name} {c['m_a']:.4f} -> {c['adapted']:.4f}" for name, c in decision.evidence.items())
        logging.getLogger(__name__).info("harm guard: %s; the result is kept (M_A -> adapted: %s)", decision.rule,
                                         found)
    return decision


def fall_back_to_source(cfg: RunConfig, data: TransferData, run_dir: Path, source_model: dict,
                        device: torch.device, kept: str, best_epoch: int, best_score: float,
                        no_adaptation: dict, decision: Decision, criterion: str) -> tuple[nn.Module, int, float]:
    """A run whose result its guard refuses returns M_A as it is: says so (`kept` names the
    epoch, e.g. "the kept adapted epoch"; `best_epoch` 0: no trained epoch was kept), writes M_A as
    best.pt and gives (model, best epoch 0, M_A's validation Jaccard)."""
    log = logging.getLogger(__name__)
    if decision.evidence is not None:
        found = "; ".join(f"{name} {c['m_a']:.4f} -> {c['adapted']:.4f} (change {c['change']:+.4f}, upper bound "
                          f"{c['upper_bound']:+.4f})" for name, c in decision.evidence.items())
        log.warning("%s (%d) is refused by the harm guard: %s. Evidence, M_A -> adapted: %s. The run falls back to "
                    "M_A on %s as it is, the source_only model", kept, best_epoch, decision.rule, found,
                    data.target_name)
    else:
        margin = f" (margin {cfg.selection_margin:.3f})" if criterion == TARGET_PLAUSIBILITY else ""
        log.warning(
            "%s (%d, %s %.4f) is not better than no adaptation (%.4f): mean gain %+.4f%s, lower confidence bound "
            "%+.4f. The run falls back to M_A on %s as it is, the source_only model", kept, best_epoch, criterion,
            best_score, no_adaptation["target_score"], decision.mean_gain, margin, decision.lower_bound,
            data.target_name)
    save_source_model_as_best(cfg, data, run_dir, source_model, selected_model=NO_ADAPTATION)
    return TranslateThenSegment(segmenter_from_checkpoint(source_model)).to(device), 0, no_adaptation["val_jaccard"]


def score_start(run: Any, target_name: str, criterion: str,
                val_jaccard: Callable[[TranslateThenSegment], float]) -> None:
    """Epoch 0 as a candidate of a run that starts from M_A: M_A as it is on the target, scored by
    the run's criterion (`run.scores`), handed to its keep-best and recorded as its best so far and
    as `run.no_adaptation` (that score and the validation Jaccard `val_jaccard(model)`)."""
    model = TranslateThenSegment(segmenter_from_checkpoint(run.source_model)).to(run.device)
    scores = run.scores(model)
    run.keeper.start(scores)
    run.best_val = float(np.mean(scores))
    run.no_adaptation = {"target_score": run.best_val, "val_jaccard": float(val_jaccard(model))}
    log.info("no adaptation (M_A on %s as it is, epoch 0): %s %.4f", target_name, criterion, run.best_val)


def conclude(run: Any, cfg: RunConfig, data: TransferData, model: nn.Module | None, decision: Decision | None,
             summary: dict, kept: str, criterion: str, duration_s: float, epochs_trained: int,
             sample_translator: Translator | None = None) -> RunResult:
    """The end every transfer run shares: its kept result, or M_A as it is where the guard's
    `decision` refuses it (fall_back_to_source), on the target's test split. `run` is the
    engine.loop run that trained it (its run directory, device, best epoch and history)."""
    if decision is not None and not decision.keep_adaptation:
        model, best_epoch, val_jaccard = fall_back_to_source(
            cfg, data, run.run_dir, run.source_model, run.device, kept, run.best_epoch, run.best_val,
            run.no_adaptation, decision, criterion)
    else:
        ckpt.save_atomic(run.best, run.best_path)
        best_epoch = run.best_epoch
        val_jaccard = next(h["val_jaccard"] for h in run.history if h["epoch"] == run.best_epoch)
    return finish_run(cfg, data, run.run_dir, model, run.device, best_epoch=best_epoch, val_jaccard=val_jaccard,
                      duration_s=duration_s, epochs_trained=epochs_trained, history=run.history,
                      summary_extra=summary, sample_translator=sample_translator)


def selection_rule(criterion: str, guard: str, decision: Decision | None) -> str:
    """In words, how a transfer run's model was chosen and what decided it (Table II names it per
    cell): the epoch ("fixed schedule" or the criterion that chose it), then the guard's verdict."""
    chosen = "fixed schedule" if criterion == FIXED_SCHEDULE else f"best epoch by {criterion}"
    if decision is None:
        return f"{chosen}; unguarded"
    verdict = decision.rule or ("kept" if decision.keep_adaptation else "refused")
    kept = "kept" if decision.keep_adaptation else "fell back to M_A"
    return f"{chosen}; {guard} guard: {verdict}, {kept}"


def selection_record(criterion: str, decision: Decision | None, best_score: float, best_epoch: int,
                     no_adaptation: dict | None, margin: float, plan: LabelPlan | None = None,
                     guard: str = "off") -> dict[str, Any]:
    """What result.json records of a transfer run's choice: which model was kept and why
    (`decision` is None when no comparison with where the run started ran), and its label plan."""
    keeps = decision is None or decision.keep_adaptation
    return {
        **(plan.record() if plan is not None else {}),
        "selection_criterion": criterion,
        "selection_rule": selection_rule(criterion, guard, decision),
        "guard": guard,
        "selected_model": ADAPTED if keeps else NO_ADAPTATION,
        "selection_score": best_score if keeps else no_adaptation["target_score"],
        "no_adaptation_score": no_adaptation["target_score"] if no_adaptation else None,
        "adapted_epoch": best_epoch,
        "selection_decision": decision.to_dict() if decision is not None else None,
        "selection_margin": margin if guard == "strict" and decision is not None and criterion == TARGET_PLAUSIBILITY
        else None,
    }
