"""The Parquet schema of the results, versioned.

`OUT/results/trials.parquet`: one row per trial. `OUT/results/images.parquet`: one row per
trial x test image.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from errors import MissingInput, UserError
from protocol.config import RunConfig

SCHEMA_VERSION = 6  # 2: checkpoint_count, checkpoint_bytes, checkpoint_s; 3: the proposed method's selection;
# 4: cfg_augmentation (the training recipe) in place of cfg_augment, cfg_pseudo_label_keep;
# 5: cfg_label_budget, target_labels_used, every transfer method's selection; 6: selection_rule

# Columns that identify a trial; shared by both tables.
KEY_COLUMNS: dict[str, pa.DataType] = {
    "trial_id": pa.string(),
    "experiment": pa.string(),  # "segmentation" | "transfer"
    "model": pa.string(),
    "task": pa.string(),
    "fold": pa.int64(),
    "repetition": pa.int64(),
    "method": pa.string(),  # "supervised" | proposed | finetune | scratch | source_only
    "label_fraction": pa.float64(),  # percent; null for segmentation trials
    "target": pa.string(),
    "profile": pa.string(),
    "seed": pa.int64(),
}

OUTCOME_COLUMNS: dict[str, pa.DataType] = {
    "status": pa.string(),  # see STATUSES
    "error": pa.string(),
    "best_epoch": pa.int64(),
    "val_jaccard": pa.float64(),
    "test_jaccard_mean": pa.float64(),
    "test_jaccard_std": pa.float64(),
    "test_dice_mean": pa.float64(),
    "test_dice_std": pa.float64(),
    "n_test_images": pa.int64(),
    "duration_s": pa.float64(),
    "node_id": pa.string(),
    "started_at": pa.float64(),  # Unix seconds when the trial's final attempt started (sweep only)
    "finished_at": pa.float64(),  # Unix seconds when it finished (sweep only)
    "device": pa.string(),
    # Transfer runs only (null for segmentation; result.json explains in full):
    "selection_criterion": pa.string(),  # what ranked its epochs (engine/evaluation/label_budget.py)
    "selected_model": pa.string(),  # "adapted", or "no_adaptation" when it fell back to M_A on b as it is
    # How the model was chosen and what decided it, in words: "fixed schedule; harm guard: no harm
    # found, kept", "...; harm guard: harm (source), fell back to M_A", "best epoch by ...; unguarded".
    "selection_rule": pa.string(),
    "selection_score": pa.float64(),  # target plausibility of the kept model (target_plausibility criterion)
    "no_adaptation_score": pa.float64(),  # the same score of M_A on b as it is
    "discriminators_saturated": pa.bool_(),  # proposed: saturated during the warm-up or the transfer epochs
    # Target labels the run read, training and epoch selection together (its label budget).
    "target_labels_used": pa.int64(),
    # Tune checkpoints the trial wrote over all its attempts (sweep only): how many, the bytes of
    # their last.pt files, and the seconds spent writing and persisting them.
    "checkpoint_count": pa.int64(),
    "checkpoint_bytes": pa.int64(),
    "checkpoint_s": pa.float64(),
    "config_json": pa.string(),  # the whole effective config, for exact reruns
    "schema_version": pa.int64(),
}

# "ok": finished and evaluated. "failed": raised after its retries (error says why).
# "not_applicable": the method cannot run in this cell (e.g. finetune at 0 % labels); never a number.
STATUSES = ("ok", "failed", "not_applicable")

_PA_OF_PY = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _config_columns() -> dict[str, pa.DataType]:
    """Every RunConfig field that is not already a key column, prefixed with cfg_."""
    out: dict[str, pa.DataType] = {}
    defaults = RunConfig()
    for f in fields(RunConfig):
        if f.name in KEY_COLUMNS:
            continue
        value = getattr(defaults, f.name)
        out[f"cfg_{f.name}"] = _PA_OF_PY.get(type(value), pa.string())
    return out


CONFIG_COLUMNS = _config_columns()

TRIALS_SCHEMA = pa.schema(
    [pa.field(n, t) for n, t in {**KEY_COLUMNS, **CONFIG_COLUMNS, **OUTCOME_COLUMNS}.items()],
    metadata={"cxrsweep_schema_version": str(SCHEMA_VERSION), "table": "trials"},
)

IMAGES_SCHEMA = pa.schema(
    [pa.field(n, t) for n, t in KEY_COLUMNS.items()]
    + [pa.field("image_id", pa.string()), pa.field("jaccard", pa.float64()), pa.field("dice", pa.float64())],
    metadata={"cxrsweep_schema_version": str(SCHEMA_VERSION), "table": "images"},
)


def key_values(cfg: RunConfig, trial_id: str) -> dict:
    """The key columns of a trial, from its config."""
    row = {name: getattr(cfg, name) for name in KEY_COLUMNS if name != "trial_id"}
    row["trial_id"] = trial_id
    return row


def config_values(cfg: RunConfig) -> dict:
    return {f"cfg_{name[4:]}": getattr(cfg, name[4:]) for name in CONFIG_COLUMNS}


def to_table(rows: Iterable[Mapping], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> a table with exactly `schema`'s columns; missing values become null."""
    rows = list(rows)
    unknown = sorted({k for r in rows for k in r} - set(schema.names))
    if unknown:
        raise ValueError(f"columns not in the {schema.metadata[b'table'].decode()} schema: {', '.join(unknown)}")
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def replace_atomically(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write a Parquet file atomically (see replace_atomically)."""
    return replace_atomically(path, lambda tmp: pq.write_table(table, tmp))


def _read(path: str | Path, schema: pa.Schema) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: results file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    expected = int(schema.metadata[b"cxrsweep_schema_version"])
    version = (table.schema.metadata or {}).get(b"cxrsweep_schema_version")
    if version is None or int(version) != expected:
        raise UserError(f"{path}: schema version {version!r}, this cxrsweep reads version {expected}")
    missing = [n for n in schema.names if n not in table.schema.names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return table.to_pandas()


def read_trials(out_dir: str | Path) -> pd.DataFrame:
    return _read(Path(out_dir) / "results" / "trials.parquet", TRIALS_SCHEMA)


def read_images(out_dir: str | Path) -> pd.DataFrame:
    return _read(Path(out_dir) / "results" / "images.parquet", IMAGES_SCHEMA)


# `cxrsweep segment`: OUT/segmentations.parquet, one row per input radiograph (inference.stages.encode_batch).
# Its version moves on its own, apart from the sweep's tables (it started at their 3).
SEGMENTATIONS_SCHEMA_VERSION = 3
SEGMENTATION_STATUSES = ("ok", "unreadable")
SEGMENTATIONS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),  # the input file, absolute
        pa.field("mask", pa.string()),  # the mask PNG relative to OUT (null when unreadable)
        pa.field("status", pa.string()),  # see SEGMENTATION_STATUSES
        pa.field("error", pa.string()),  # why the file could not be read ("" when ok)
        pa.field("height", pa.int64()),  # the input's full frame (the mask's size)
        pa.field("width", pa.int64()),
        # The content the network saw (data_io.preprocess.CropBox): rows content_top ..
        # content_bottom - 1, columns content_left .. content_right - 1; the whole frame when the
        # checkpoint's content crop is off or found nothing to trim. The mask is 0 outside it.
        pa.field("content_top", pa.int64()),
        pa.field("content_left", pa.int64()),
        pa.field("content_bottom", pa.int64()),
        pa.field("content_right", pa.int64()),
        pa.field("file_bytes", pa.int64()),  # the file's size and modification time when it was segmented:
        pa.field("file_mtime_ns", pa.int64()),  # a changed file is segmented again
        pa.field("task", pa.string()),
        # Areas are shares of the content box, as the training range (train_foreground_range) is.
        pa.field("area_fraction", pa.float64()),  # predicted foreground / content area
        pa.field("left_area_fraction", pa.float64()),  # patient's left: the image's right of the mask's midline
        pa.field("right_area_fraction", pa.float64()),
        pa.field("n_components", pa.int64()),
        pa.field("n_large_components", pa.int64()),  # components of at least LARGE_COMPONENT_FRACTION of the content
        pa.field("mean_confidence", pa.float64()),  # mean foreground probability over predicted foreground pixels
        pa.field("qc_flag", pa.bool_()),
        pa.field("qc_reason", pa.string()),  # "; "-joined reasons ("" when not flagged)
        pa.field("checkpoint_sha256", pa.string()),
        pa.field("segmented_at", pa.float64()),  # Unix seconds
        pa.field("schema_version", pa.int64()),
    ],
    metadata={"cxrsweep_schema_version": str(SEGMENTATIONS_SCHEMA_VERSION), "table": "segmentations"},
)


def read_segmentations(out_dir: str | Path) -> pd.DataFrame:
    return _read(Path(out_dir) / "segmentations.parquet", SEGMENTATIONS_SCHEMA)
