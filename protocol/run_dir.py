"""The run-directory contract: what a run leaves in its folder, under which names, and the one
function that writes a run's test outputs.

    <run_dir>/
        result.json          summary (RunResult's fields, the proposed method's selection, config)
        history.csv          one row per epoch, the metrics the engine logs (`cxrsweep train`,
                             `cxrsweep train-transfer`: write_history)
        images.parquet       one row per test image (protocol.results.IMAGES_SCHEMA)
        best.pt              the kept network (written when the run ends)
        checkpoints/last.pt  what a resume needs (engine.runtime.checkpoints.CheckpointClock)
        overlays/*.png       test images with their predicted masks drawn on them
        translations/*.png   translation samples (the proposed method)
        trial.json           the sweep's mark of a finished trial, written last (protocol.store)
        failed.json          ... of a trial that failed after its retries
        not_applicable.json  ... of a cell the method cannot fill

A translator warm-up's folder holds translator-<name>-<key>.pt and its -samples/ folder.

Importing this module stays light (no torch, no Ray): the report reads the names too.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

RESULT_JSON = "result.json"
HISTORY_CSV = "history.csv"
IMAGES_PARQUET = "images.parquet"
BEST_CHECKPOINT = "best.pt"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
OVERLAYS_DIR = "overlays"
TRANSLATIONS_DIR = "translations"
# The sweep's outcome marks (protocol/store.py): exactly one of them says how a trial ended.
COMPLETE_MARKER = "trial.json"
FAILED_MARKER = "failed.json"
NOT_APPLICABLE_MARKER = "not_applicable.json"

# result.json "selected_model" (the proposed method's kept model) / trials.parquet column of the same name.
NO_ADAPTATION = "no_adaptation"
ADAPTED = "adapted"
# result.json "selection_criterion": what ranked the epochs of a transfer run (engine.evaluation.label_budget).
TARGET_JACCARD = "target_val_jaccard"  # labelled target validation split (the paper's label budget)
HELD_OUT_JACCARD = "held_out_target_jaccard"  # a held-back part of the run's own labelled images (honest budget)
TARGET_PLAUSIBILITY = "target_plausibility"  # unlabelled target validation images, no-adaptation fallback
SOURCE_JACCARD = "source_val_jaccard"  # source validation images through A -> B -> A (the paper's)
FIXED_SCHEDULE = "fixed_schedule"  # no epoch chosen: the run's schedule ends where it ends

# A translator warm-up's folder: its checkpoint and, beside it, samples of its translations.
TRANSLATOR_GLOB = "translator-*.pt"


def translator_checkpoint_name(translator: str, key: str) -> str:
    return f"translator-{translator}-{key}.pt"


def translator_samples_name(translator: str, key: str) -> str:
    return f"translator-{translator}-{key}-samples"


# How many test images a run draws its masks on.
N_OVERLAYS = 4


def last_checkpoint_path(run_dir: str | Path) -> Path:
    """What a resume needs (see CheckpointClock for when it is written); a run directory holding it is resumed."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT


def best_checkpoint_path(run_dir: str | Path) -> Path:
    """The network of the best epoch by validation Jaccard, written when the run ends."""
    return Path(run_dir) / BEST_CHECKPOINT


class RunDirectoryPaths:
    """For a trainer with a `run_dir`: where its checkpoints live."""

    run_dir: Path

    @property
    def last_path(self) -> Path:
        return last_checkpoint_path(self.run_dir)

    @property
    def best_path(self) -> Path:
        return best_checkpoint_path(self.run_dir)


@dataclass
class RunResult:
    """Summary of a finished run; also written to `run_dir/result.json` (plus the config).

    Field names match the trials.parquet outcome columns of protocol/results.py (TABLED_FIELDS).
    """

    run_dir: Path
    best_epoch: int
    val_jaccard: float
    test_jaccard_mean: float
    test_jaccard_std: float
    test_dice_mean: float
    test_dice_std: float
    n_test_images: int
    duration_s: float  # training + evaluation time over all sessions of the run (resumes add up)
    device: str
    epochs_trained: int  # epochs trained by this call; 0 when it found the run already finished
    history: list[dict] = field(default_factory=list)  # the metrics dict of every epoch

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


# What a transfer run's result.json adds that trials.parquet carries too (the rest of its
# selection record stays in result.json; engine.transfer.outcome.selection_record writes it).
PROPOSED_TABLED_FIELDS = ("selection_criterion", "selected_model", "selection_rule", "selection_score",
                          "no_adaptation_score",
                          "discriminators_saturated", "target_labels_used")
# The result.json fields a trials.parquet row copies: RunResult's, less what says nothing of the
# outcome (where it lay, how much this call trained, the per-epoch history), and the proposed method's.
TABLED_FIELDS = tuple(f.name for f in fields(RunResult)
                      if f.name not in ("run_dir", "epochs_trained", "history")) + PROPOSED_TABLED_FIELDS


def write_test_outputs(run_dir: Path, cfg, test_ids: Sequence[str], test_images: np.ndarray,
                       predictions: np.ndarray, test_masks: np.ndarray | None, jaccards: np.ndarray,
                       dices: np.ndarray, *, best_epoch: int, val_jaccard: float, duration_s: float, device: Any,
                       epochs_trained: int, history: list[dict], started: float,
                       summary_extra: dict | None = None) -> RunResult:
    """Write a finished run's test outputs: images.parquet (per test image), overlays/, and
    result.json (the RunResult, `summary_extra`'s fields, the config). `started` is when the
    evaluation began (time.perf_counter): its seconds join `duration_s`."""
    from data_io.overlays import save_overlays
    from protocol.results import IMAGES_SCHEMA, key_values, to_table, write_atomic

    run_dir = Path(run_dir)
    keys = key_values(cfg, trial_id=run_dir.name)
    rows = [{**keys, "image_id": image_id, "jaccard": float(j), "dice": float(d)}
            for image_id, j, d in zip(test_ids, jaccards, dices)]
    write_atomic(to_table(rows, IMAGES_SCHEMA), run_dir / IMAGES_PARQUET)
    save_overlays(run_dir / OVERLAYS_DIR, test_ids, test_images, predictions, test_masks, limit=N_OVERLAYS)

    def stat(values: np.ndarray, how) -> float:
        return float(how(values)) if len(values) else float("nan")

    result = RunResult(
        run_dir=run_dir, best_epoch=best_epoch, val_jaccard=float(val_jaccard),
        test_jaccard_mean=stat(jaccards, np.mean), test_jaccard_std=stat(jaccards, np.std),
        test_dice_mean=stat(dices, np.mean), test_dice_std=stat(dices, np.std),
        n_test_images=len(jaccards), duration_s=duration_s + time.perf_counter() - started, device=str(device),
        epochs_trained=epochs_trained, history=history,
    )
    summary = {k: v for k, v in result.to_dict().items() if k != "history"}
    summary.update(summary_extra or {})
    summary["config"] = cfg.to_dict()
    (run_dir / RESULT_JSON).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return result


def write_history(run_dir: str | Path, history: Sequence[dict]) -> Path:
    """run_dir/history.csv: one row per epoch of `history` (RunResult.history), one column per
    metric any epoch logged ("epoch" first, then in the order they first appear); a metric an
    epoch did not log (validation on epochs that skip it, checkpoint figures between
    checkpoints) is an empty cell. Written whole, atomically (a resumed run writes its whole
    history again)."""
    from protocol.results import replace_atomically

    columns = list(dict.fromkeys(["epoch", *(name for row in history for name in row)]))

    def cell(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # "nan" / "inf", which csv and pandas read back
        return value

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            for row in history:
                writer.writerow({name: cell(value) for name, value in row.items()})

    return replace_atomically(Path(run_dir) / HISTORY_CSV, write)
