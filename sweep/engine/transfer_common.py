"""What every transfer method shares: the model applied to target images, its validation, and the
files a run leaves (test outputs, translation samples, best.pt of M_A as it is). Plain PyTorch."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from data_io.preprocess import preprocessing_record
from models.registry import segmenter_from_checkpoint
from models.translators.base import Translator
from sweep.config import RunConfig
from sweep.engine import checkpoints as ckpt
from sweep.engine.run_dir import ADAPTED, NO_ADAPTATION, TRANSLATIONS_DIR, RunResult, best_checkpoint_path, write_test_outputs
from sweep.engine.scoring import SplitScorer, predict_and_score
from sweep.engine.transfer_data import TransferData
from sweep.engine.translation import save_translation_samples

N_TRANSLATION_SAMPLES = 4


class TranslateThenSegment(nn.Module):
    """The model applied to target images: M_A(G_BA(b)), or M_A(b) when there is no translator."""

    def __init__(self, segmenter: nn.Module, translator: Translator | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.translator = translator

    def forward(self, target_images: Tensor) -> Tensor:
        if self.translator is not None:
            target_images = self.translator.translate_ba(target_images)
        return self.segmenter(target_images)


class ValidationScorer:
    """Mean Jaccard on the target validation split when the run has target labels, else on the
    source validation split (through A -> B -> A when there is a translator). Never the test split.
    The split goes to the device once; each call scores the model as it is now."""

    def __init__(self, data: TransferData, device: torch.device):
        self.on_target = data.target_val_masks is not None and data.n_labelled > 0
        self.split = "target" if self.on_target else "source"
        if self.on_target:
            self.scorer = SplitScorer(data.target_val_images, data.target_val_masks, data.target_val_frame, device)
        else:
            self.scorer = SplitScorer(data.source_val_images, data.source_val_masks, data.source_val_frame, device)

    def __call__(self, model: TranslateThenSegment) -> tuple[float, str]:
        scored: nn.Module = model
        if not self.on_target:
            scored = model.segmenter
            if model.translator is not None:
                scored = nn.Sequential(_CycleABA(model.translator), model.segmenter)
        return float(self.scorer(scored)[0].mean()), self.split


def validation_jaccard(data: TransferData, model: TranslateThenSegment, device: torch.device) -> tuple[float, str]:
    """One validation pass (ValidationScorer) for a run that scores once."""
    return ValidationScorer(data, device)(model)


class _CycleABA(nn.Module):
    def __init__(self, translator: Translator):
        super().__init__()
        self.translator = translator

    def forward(self, images: Tensor) -> Tensor:
        return self.translator.cycle_aba(images)


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


def fall_back_to_source(cfg: RunConfig, data: TransferData, run_dir: Path, source_model: dict,
                        device: torch.device, kept: str, best_epoch: int, best_score: float,
                        no_adaptation: dict, decision: dict) -> tuple[nn.Module, int, float]:
    """A run whose kept epoch is not clearly more plausible than no adaptation returns M_A as it
    is: says so (`kept` names the epoch, e.g. "the kept adapted epoch"), writes M_A as best.pt and
    gives (model, best epoch 0, M_A's source validation Jaccard)."""
    logging.getLogger(__name__).warning(
        "%s (%d, plausibility %.4f) is not clearly better than no adaptation (%.4f): mean gain %+.4f (margin "
        "%.3f), lower confidence bound %+.4f. The run falls back to M_A on %s as it is, the source_only model",
        kept, best_epoch, best_score, no_adaptation["target_score"], decision["mean_gain"], cfg.selection_margin,
        decision["lower_bound"], data.target_name)
    save_source_model_as_best(cfg, data, run_dir, source_model, selected_model=NO_ADAPTATION)
    return TranslateThenSegment(segmenter_from_checkpoint(source_model)).to(device), 0, no_adaptation["val_jaccard"]


def selection_record(criterion: str, decision, best_score: float, best_epoch: int,
                     no_adaptation: dict | None, margin: float) -> dict[str, Any]:
    """What result.json records of a transfer run's choice (proposed, self_training): which model
    was kept and why; `decision` (selection.Decision) is None when no comparison with no
    adaptation ran."""
    keeps = decision is None or decision.keep_adaptation
    return {
        "selection_criterion": criterion,
        "selected_model": ADAPTED if keeps else NO_ADAPTATION,
        "selection_score": best_score if keeps else no_adaptation["target_score"],
        "no_adaptation_score": no_adaptation["target_score"] if no_adaptation else None,
        "adapted_epoch": best_epoch,
        "selection_decision": decision.to_dict() if decision is not None else None,
        "selection_margin": margin if decision is not None else None,
    }
