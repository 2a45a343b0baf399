"""A realistic sweep on disk for the report's tests: Parquet files written with the declared
schema, run directories with real PNG overlays, and the irregularities a real sweep has.

Planted on purpose (the tests check each one):
- Table I: `heart / fcn` has no trial at all (missing); `clavicles / segnet` fold 3 failed.
- Table II: finetune and scratch at 0 % labels are not applicable, and so is source_only above
  0 % (as the sweep's grid declares); scratch at 50 % is missing; finetune at 5 % failed in
  repetition 1; proposed at 100 % finished only repetition 0; self_training at 0 % fell back to
  M_A in repetition 2, refused by its harm guard.
Run directories follow the sweep's layout, `OUT/runs/<trial_id>/{overlays,translations}/*.png`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis import paper_values
from protocol.config import LABEL_FRACTIONS, SEGMENTATION_MODELS, TASKS, TRANSFER_METHODS, make_config
from protocol.results import IMAGES_SCHEMA, TRIALS_SCHEMA, config_values, key_values, to_table, write_atomic

MISSING_SEGMENTATION_CELL = ("heart", "fcn")
FAILED_SEGMENTATION_TRIAL = ("clavicles", "segnet", 3)
NOT_APPLICABLE_AT_ZERO = ("finetune", "scratch")
MISSING_TRANSFER_CELL = (50.0, "scratch")
FAILED_TRANSFER_TRIAL = (5.0, "finetune", 1)
SINGLE_REPETITION_CELL = (100.0, "proposed")
FELL_BACK_TRIAL = (0.0, "self_training", 2)
KEPT_RULE = "fixed schedule; harm guard: no harm found, kept"
FELL_BACK_RULE = "fixed schedule; harm guard: harm (source), fell back to M_A"
LABEL_FREE_METHOD = "source_only"
TARGET = "montgomery"
SOURCE_ONLY_JACCARD = 0.86


@dataclass
class FakeSweep:
    """Where the sweep is and what was planted in it (tests read the plants from here)."""

    out_dir: Path
    n_folds: int
    n_repetitions: int
    missing_segmentation_cell: tuple = MISSING_SEGMENTATION_CELL
    failed_segmentation_trial: tuple = FAILED_SEGMENTATION_TRIAL
    not_applicable_at_zero: tuple = NOT_APPLICABLE_AT_ZERO
    missing_transfer_cell: tuple = MISSING_TRANSFER_CELL
    failed_transfer_trial: tuple = FAILED_TRANSFER_TRIAL
    single_repetition_cell: tuple = SINGLE_REPETITION_CELL
    fell_back_trial: tuple = FELL_BACK_TRIAL
    label_free_method: str = LABEL_FREE_METHOD


def _image_scores(rng, centre: float, spread: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    jaccard = np.clip(rng.normal(centre, spread, n), 0.02, 0.995)
    return jaccard, 2 * jaccard / (1 + jaccard)


def _trial_row(cfg, trial_id: str, status: str, jaccard=None, dice=None, error=None) -> dict:
    row = {**key_values(cfg, trial_id), **config_values(cfg), "status": status, "error": error,
           "config_json": cfg.to_json(), "schema_version": 1, "node_id": "node-0", "device": "cpu"}
    if status == "ok":
        row.update(best_epoch=1, val_jaccard=float(jaccard.mean()), test_jaccard_mean=float(jaccard.mean()),
                   test_jaccard_std=float(jaccard.std()), test_dice_mean=float(dice.mean()),
                   test_dice_std=float(dice.std()), n_test_images=len(jaccard), duration_s=12.5)
    return row


def _save_png(path: Path, seed: int) -> None:
    """A small radiograph-like gray image with a red 'prediction' blob, as the engine draws them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    gray = (120 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 11.0)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    blob = (xx - 32) ** 2 / 200 + (yy - 30) ** 2 / 350 < 1
    rgb[blob] = (0.6 * rgb[blob] + 0.4 * np.array([255, 40, 40])).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


def _save_run_dir(out_dir: Path, cfg, trial_id: str, image_ids, with_translations: bool = False) -> None:
    run_dir = out_dir / "runs" / trial_id
    for number, image_id in enumerate(image_ids):
        _save_png(run_dir / "overlays" / f"{image_id}.png", number)
        if with_translations:
            _save_png(run_dir / "translations" / f"{image_id}.png", number + 7)
    (run_dir / "result.json").write_text(json.dumps({"config": cfg.to_dict()}))


def write_fake_sweep(out_dir: Path, n_folds: int = 5, n_repetitions: int = 3, images_per_fold: int = 10,
                     target_test_images: int = 12, overlays_in_every_run: int = 0, seed: int = 0) -> FakeSweep:
    """Write the sweep; `overlays_in_every_run` > 0 saves that many overlays in every finished run
    (as the engine does), otherwise only two runs save a few."""
    rng = np.random.default_rng(seed)
    trials, images = [], []

    def add(cfg, trial_id, status, centre=None, spread=None, image_ids=(), error=None, **outcome):
        jaccard = dice = None
        if status == "ok":
            jaccard, dice = _image_scores(rng, centre, spread, len(image_ids))
            keys = key_values(cfg, trial_id)
            images.extend({**keys, "image_id": i, "jaccard": float(j), "dice": float(d)}
                          for i, j, d in zip(image_ids, jaccard, dice))
            if overlays_in_every_run:
                _save_run_dir(out_dir, cfg, trial_id, image_ids[:overlays_in_every_run],
                              with_translations=cfg.method == "proposed")
        trials.append({**_trial_row(cfg, trial_id, status, jaccard, dice, error), **outcome})

    for task in TASKS:
        for model in SEGMENTATION_MODELS:
            if (task, model) == MISSING_SEGMENTATION_CELL:
                continue
            paper_jaccard = paper_values.TABLE_I[(task, model)].jaccard.mean / 100
            for fold in range(n_folds):
                cfg = make_config("smoke", experiment="segmentation", task=task, model=model, fold=fold)
                trial_id = f"seg-{task}-{model}-f{fold}"
                ids = [f"JPCLN{fold * images_per_fold + i:03d}" for i in range(images_per_fold)]
                if (task, model, fold) == FAILED_SEGMENTATION_TRIAL:
                    add(cfg, trial_id, "failed", error="RuntimeError: loss became NaN at epoch 2")
                    continue
                add(cfg, trial_id, "ok", paper_jaccard + rng.normal(0, 0.006), 0.03, ids)
                if (task, model, fold) == ("lungs", "unet", 0) and not overlays_in_every_run:
                    _save_run_dir(out_dir, cfg, trial_id, ids[:2])

    target_ids = [f"MCUCXR_{i:04d}_0" for i in range(3 * target_test_images)]
    for repetition in range(n_repetitions):
        # One seeded test split per repetition, shared by every method and fraction: the pairing unit.
        test_ids = list(rng.permutation(target_ids)[:target_test_images])
        for fraction in LABEL_FRACTIONS:
            for method in TRANSFER_METHODS:
                cfg = make_config("smoke", experiment="transfer", task="lungs", model="unet", method=method,
                                  label_fraction=fraction, repetition=repetition, target=TARGET)
                trial_id = f"tr-{method}-{fraction:g}-r{repetition}"
                if (fraction, method) == MISSING_TRANSFER_CELL:
                    continue
                if (fraction, method) == SINGLE_REPETITION_CELL and repetition > 0:
                    continue
                if fraction == 0 and method in NOT_APPLICABLE_AT_ZERO:
                    add(cfg, trial_id, "not_applicable", error=f"{method} needs target labels and this cell has 0 %")
                    continue
                if fraction > 0 and method == LABEL_FREE_METHOD:
                    add(cfg, trial_id, "not_applicable", error=f"{method} uses no target labels: its result is "
                                                                "the 0 % row")
                    continue
                if (fraction, method, repetition) == FAILED_TRANSFER_TRIAL:
                    add(cfg, trial_id, "failed", error="CUDA out of memory")
                    continue
                published = paper_values.table_ii_value(TARGET, fraction, method)
                centre = published.mean / 100 if published else SOURCE_ONLY_JACCARD
                outcome = {}
                if method != LABEL_FREE_METHOD:
                    fell_back = (fraction, method, repetition) == FELL_BACK_TRIAL
                    outcome = {"selected_model": "no_adaptation" if fell_back else "adapted",
                               "selection_rule": FELL_BACK_RULE if fell_back else KEPT_RULE,
                               "target_labels_used": round(fraction * 0.82)}
                add(cfg, trial_id, "ok", centre + rng.normal(0, 0.01), 0.07, test_ids, **outcome)
                if (fraction, method, repetition) == (0.0, "proposed", 0) and not overlays_in_every_run:
                    _save_run_dir(out_dir, cfg, trial_id, test_ids[:3], with_translations=True)

    write_atomic(to_table(trials, TRIALS_SCHEMA), out_dir / "results" / "trials.parquet")
    write_atomic(to_table(images, IMAGES_SCHEMA), out_dir / "results" / "images.parquet")
    return FakeSweep(out_dir, n_folds, n_repetitions)


@pytest.fixture(scope="session")
def fake_sweep(tmp_path_factory) -> FakeSweep:
    return write_fake_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="session")
def built_report(fake_sweep) -> Path:
    """The report of the fake sweep, built once: several tests read its files."""
    from analysis.report import build_report

    return build_report(fake_sweep.out_dir)


@pytest.fixture
def sweep_copy(tmp_path):
    """A fresh fake sweep a test may damage."""
    return write_fake_sweep(tmp_path / "sweep", n_folds=2, n_repetitions=2, images_per_fold=4, target_test_images=6)
