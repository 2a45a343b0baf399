"""`source_only`: M_A applied to the target images as they are (the same intensity normalisation),
the honest 0 % baseline every adaptation method is judged against."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from engine.data.transfer import TransferData
from engine.evaluation.label_budget import LabelPlan
from engine.runtime.device import (
    resolve_device,
)
from engine.transfer.outcome import (
    finish_run,
    save_source_model_as_best,
    validation_jaccard,
)
from models.loading import TranslateThenSegment
from models.registry import segmenter_from_checkpoint
from protocol.config import RunConfig
from protocol.run_dir import RunResult

log = logging.getLogger(__name__)


def source_only_run(cfg: RunConfig, data: TransferData, plan: LabelPlan, run_dir: Path,
                    source_model: dict) -> RunResult:
    """M_A on the target as it is: its validation Jaccard, M_A written as best.pt, the target's test split."""
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
