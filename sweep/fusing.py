"""Which grid trials train together as one fused computation (engine.fused): the grid's grouping
rule, which only the sweep's scheduler and the fusing benchmark use."""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.fused.proposed import proposed_fusable, proposed_fuse_key
from engine.fused.supervised import fuse_key
from protocol.config import TRAINER_METHODS
from protocol.grid import SEGMENTATION, TRANSFER

if TYPE_CHECKING:
    from protocol.grid import TrialSpec


def group_key(spec: "TrialSpec") -> tuple | None:
    """What a grid trial shares with the trials it may be fused with, or None for a trial that is
    trained alone. Fused: supervised segmentation trials (Table I, and M_A) of one task; the
    finetune / scratch runs of one task and target (every label fraction and repetition: their
    epochs are the same number of steps, engine.transfer.target_training), fine-tuning that replays the
    source images apart from runs on the target alone; the self-training runs of one
    task and target (their epochs differ by the pseudo-labels each keeps: a shorter member sits
    out the last steps); the proposed runs of one task and target (every fraction and repetition,
    engine.fused.proposed) where `proposed_fusable`. The warm-ups, source_only and the Fig. 9 runs
    run alone."""
    cfg = spec.config
    if spec.kind == SEGMENTATION:
        return (SEGMENTATION, cfg.task, *fuse_key(cfg))
    if spec.kind == TRANSFER and cfg.method in TRAINER_METHODS:
        kind = "self_training" if cfg.method == "self_training" else "target_labels"
        if cfg.method == "finetune" and cfg.source_replay:  # its epochs also pass over the source images
            kind = "target_labels_with_source"
        return (kind, cfg.task, cfg.target, *fuse_key(cfg.replace(epochs=spec.training_epochs)))
    if spec.kind == TRANSFER and cfg.method == "proposed" and proposed_fusable(cfg):
        return ("proposed", cfg.task, cfg.target, *proposed_fuse_key(cfg))
    return None
