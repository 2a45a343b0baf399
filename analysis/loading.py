"""Read a sweep's results once, check them, and decide which rows count.

Which trials count: one row per grid cell key. When the sweep recorded the same key more
than once (a retry, a resumed sweep), an "ok" row wins over a "failed" one and, among
rows of the same status, the last one written wins; the superseded rows are reported, and
their per-image rows are dropped, so a retried trial never counts twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from errors import MissingInput, UserError
from protocol.results import IMAGES_SCHEMA, KEY_COLUMNS, STATUSES, read_images, read_trials

# The config column of the training recipe: a grid axis (build_grid's augmentations), so part of a cell.
RECIPE = "cfg_augmentation"
# The config column of a transfer run's label budget (engine/evaluation/label_budget.py): the same cell
# run with the honest budget and the paper's is two cells.
LABEL_BUDGET = "cfg_label_budget"
# The columns that name one cell of the grid: everything in the key but the trial's id, the
# recipe (the same fold trained with and without augmentation is two cells, not a retry) and the
# label budget.
CELL_KEY = [*(name for name in KEY_COLUMNS if name not in ("trial_id", "seed")), RECIPE, LABEL_BUDGET]


@dataclass
class Results:
    out_dir: Path
    trials: pd.DataFrame  # the counted trials, one per cell key, every status
    images: pd.DataFrame  # per-image rows of the counted "ok" trials only
    superseded: pd.DataFrame  # rows replaced by a later or better row for the same key
    profile: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def failed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "failed"]


def load_results(out_dir: str | Path, profile: str | None = None) -> Results:
    out_dir = Path(out_dir)
    results_dir = out_dir / "results"
    if not results_dir.is_dir():
        raise MissingInput(f"{results_dir}: results directory not found (is {out_dir} a sweep's output?)")
    notes: list[str] = []
    trials = read_trials(out_dir)
    trials_path = results_dir / "trials.parquet"
    unknown = sorted(set(trials["status"].dropna()) - set(STATUSES))
    if unknown:
        raise UserError(f"{trials_path}: unknown status value(s) {', '.join(unknown)}; expected {', '.join(STATUSES)}")
    if trials["status"].isna().any():
        raise UserError(f"{trials_path}: {int(trials['status'].isna().sum())} trial(s) without a status")

    images_path = results_dir / "images.parquet"
    if images_path.exists():
        images = read_images(out_dir)
    else:
        images = pd.DataFrame({name: pd.Series(dtype=object) for name in IMAGES_SCHEMA.names})
        notes.append(f"{images_path} not found: per-image spreads, bootstrap intervals and paired tests are missing.")

    profiles = sorted(trials["profile"].dropna().unique())
    if profile is not None:
        if profile not in profiles:
            raise UserError(f"{trials_path}: no trials of profile {profile!r}; "
                            f"it holds {', '.join(profiles) or 'none'}")
        trials = trials[trials["profile"] == profile]
        images = images[images["profile"] == profile]
    elif len(profiles) > 1:
        raise UserError(
            f"{trials_path}: trials of several profiles ({', '.join(profiles)}); choose one with --profile"
        )
    else:
        profile = profiles[0] if profiles else None

    counted, superseded = _one_row_per_cell(trials)
    if len(superseded):
        notes.append(f"{len(superseded)} trial row(s) superseded by a retry of the same cell were not counted.")
    ok_ids = set(counted.loc[counted["status"] == "ok", "trial_id"])
    images = images[images["trial_id"].isin(ok_ids)].copy()
    for column in ("jaccard", "dice"):
        images[column] = images[column].astype(float)
    return Results(out_dir, counted, images, superseded, profile, notes)


def _one_row_per_cell(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    ranked = trials.reset_index(drop=True).assign(
        _is_ok=lambda t: (t["status"] == "ok").astype(int), _order=lambda t: range(len(t))
    )
    ranked = ranked.sort_values(["_is_ok", "_order"])
    keep = ~ranked.duplicated(subset=CELL_KEY, keep="last")
    chosen = ranked[keep].sort_values("_order").drop(columns=["_is_ok", "_order"])
    dropped = ranked[~keep].sort_values("_order").drop(columns=["_is_ok", "_order"])
    return chosen.reset_index(drop=True), dropped.reset_index(drop=True)
