"""Table I and Table II as numbers (tidy frames, in percent) and as display tables.

Cell semantics, shared by both tables:
- "ok": at least one counted trial of the cell finished; only "ok" trials give numbers.
- "failed": the cell's trials exist but none finished; shown as missing, listed as failures.
- "not_applicable": the method cannot run there (finetune at 0 % labels); shown as "n/a".
- "missing": no trial of the cell was recorded (a partial sweep); shown as "—", never 0.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis import paper_values
from analysis.loading import LABEL_BUDGET, RECIPE, Results
from analysis.render import Cell, DisplayTable, Section
from analysis.stats import interval, mean_std, wilcoxon_paired
from protocol.config import (
    AUGMENTATIONS,
    LABEL_BUDGETS,
    LABEL_FRACTIONS,
    PAPER_TRANSFER,
    SEGMENTATION_MODELS,
    TASKS,
    TRANSFER_METHODS,
    RunConfig,
    transfer_variant,
)
from protocol.grid import SEGMENTATION, TRANSFER
from protocol.run_dir import NO_ADAPTATION, TARGET_PLAUSIBILITY

PROPOSED = "proposed"
MISSING = "—"
NOT_APPLICABLE = "n/a"
# Jaccard and Dice are stored as fractions; the paper (and so the report) speaks percent.
PERCENT = 100.0


def cell_status(trials: pd.DataFrame) -> str:
    statuses = set(trials["status"])
    if "ok" in statuses:
        return "ok"
    if "failed" in statuses:
        return "failed"
    if "not_applicable" in statuses:
        return "not_applicable"
    return "missing"


def _ordered(declared, present) -> list:
    """The declared names first (so a partial sweep shows its gaps), then any extra found."""
    extra = sorted(set(present) - set(declared))
    return list(declared) + extra


# How each training recipe (cfg_augmentation) is named in the report's notes.
RECIPE_TEXT = {
    "none": "none = the paper's protocol (no augmentation)",
    "affine": "affine = small affine warps (rotation ±10°, scale ±10 %, shift ±5 %)",
    "robust": "robust = cxrsweep's default (rotation, zoom, aspect, shift, noise, blur, brightness, contrast, "
              "low resolution, gamma; engine/data/augmentation.py)",
}


def recipes(trials: pd.DataFrame) -> list[str]:
    """The training recipes the trials ran, in AUGMENTATIONS order."""
    present = trials[RECIPE].dropna().unique() if RECIPE in trials else []
    return [r for r in _ordered(AUGMENTATIONS, present) if r in set(present)]


def recipe_note(names) -> str:
    return "Training (augmentation) of every segmenter: " + "; ".join(RECIPE_TEXT.get(n, n) for n in names) + "."


def _percent(values) -> np.ndarray:
    return np.asarray(values, dtype=float) * PERCENT


# --------------------------------------------------------------------------- Table I


def table1_frame(results: Results, ci: str = "t") -> pd.DataFrame:
    """One row per (task, training recipe, model): fold-level and image-level Jaccard / Dice, CI, paper values."""
    segmentation = results.trials[results.trials["experiment"] == SEGMENTATION]
    images = results.images
    rows = []
    ran = recipes(segmentation) or recipes(results.trials) or [RunConfig.augmentation]
    cells = [(t, r, m) for t in _ordered(TASKS, segmentation["task"].dropna()) for r in ran
             for m in _ordered(SEGMENTATION_MODELS, segmentation["model"].dropna())]
    for task, recipe, model in cells:
        cell = segmentation[(segmentation["task"] == task) & (segmentation["model"] == model)
                            & (segmentation[RECIPE] == recipe)]
        ok = cell[cell["status"] == "ok"]
        cell_images = images[images["trial_id"].isin(ok["trial_id"])]
        fold_jaccard = _percent(ok["test_jaccard_mean"])
        j_mean, j_std, n_folds = mean_std(fold_jaccard)
        d_mean, d_std, _ = mean_std(_percent(ok["test_dice_mean"]))
        ij_mean, ij_std, n_images = mean_std(_percent(cell_images["jaccard"]))
        id_mean, id_std, _ = mean_std(_percent(cell_images["dice"]))
        ci_values = fold_jaccard if ci == "t" else _percent(cell_images["jaccard"])
        ci_low, ci_high = interval(ci_values, ci)
        paper = paper_values.TABLE_I.get((task, model))
        rows.append(
            {
                "task": task,
                "augmentation": recipe,
                "model": model,
                "status": cell_status(cell),
                "n_folds_ok": n_folds,
                "n_folds_failed": int((cell["status"] == "failed").sum()),
                "jaccard_mean_pct": j_mean,
                "jaccard_std_pct": j_std,
                "dice_mean_pct": d_mean,
                "dice_std_pct": d_std,
                "n_images": n_images,
                "jaccard_image_mean_pct": ij_mean,
                "jaccard_image_std_pct": ij_std,
                "dice_image_mean_pct": id_mean,
                "dice_image_std_pct": id_std,
                "ci_method": ci,
                "ci_unit": "folds" if ci == "t" else "images",
                "jaccard_ci_low_pct": ci_low,
                "jaccard_ci_high_pct": ci_high,
                "paper_jaccard_mean_pct": paper.jaccard.mean if paper else math.nan,
                "paper_jaccard_std_pct": _std_or_nan(paper.jaccard) if paper else math.nan,
                "paper_dice_mean_pct": paper.dice.mean if paper and paper.dice else math.nan,
                "paper_dice_std_pct": _std_or_nan(paper.dice) if paper and paper.dice else math.nan,
            }
        )
    frame = pd.DataFrame(rows, columns=None if rows else ["task", "augmentation", "model"])
    for metric in ("jaccard", "dice"):
        frame[f"best_{metric}"] = _is_best(frame, f"{metric}_mean_pct", by=["task", "augmentation"])
    return frame


def _std_or_nan(value: paper_values.PublishedValue) -> float:
    return math.nan if value.std is None else value.std


def _is_best(frame: pd.DataFrame, column: str, by: list[str]) -> pd.Series:
    if frame.empty:
        return pd.Series(dtype=bool)
    best = frame.groupby(by, sort=False)[column].transform("max")
    return frame[column].notna() & (frame[column] == best)


def format_mean_std(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return MISSING
    if not np.isfinite(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _shown(status: str, mean: float, std: float) -> str:
    """What a cell displays; a cell with no number never shows one."""
    if status == "not_applicable":
        return NOT_APPLICABLE
    if status == "failed":
        return f"{MISSING} (failed)"
    return format_mean_std(mean, std)


def _published(value: paper_values.PublishedValue | None) -> str:
    if value is None:
        return MISSING
    return format_mean_std(value.mean, _std_or_nan(value))


def cross_validation_folds(trials: pd.DataFrame) -> int | None:
    """The k of the k-fold cross-validation the segmentation trials used, if they agree on one."""
    folds = trials.loc[trials["experiment"] == SEGMENTATION, "cfg_n_folds"].dropna().unique()
    return int(folds[0]) if len(folds) == 1 else None


def table1_display(frame: pd.DataFrame, n_folds: int | None = None) -> DisplayTable:
    header = ["Model", "Training", "Jaccard (%)", "Dice (%)", "Jaccard per image (%)", "Dice per image (%)", "Folds",
              "Paper Jaccard (%)", "Paper Dice (%)"]
    rows: list = []
    notes = [
        "Jaccard and Dice: mean ± sample standard deviation across the cross-validation folds "
        "(each fold's value is the mean over its test images), as in the paper.",
        "Per image: mean ± standard deviation over all test images of all finished folds.",
        "Bold: the best of our models per task, training and metric. '—' a cell with no finished trial, "
        "'— (failed)' a cell whose trials all failed (see Failures); missing cells are never averaged as 0.",
    ]
    for task, group in frame.groupby("task", sort=False):
        rows.append(Section(task))
        for r in group.itertuples():
            folds = f"{r.n_folds_ok}" + (f" ({r.n_folds_failed} failed)" if r.n_folds_failed else "")
            rows.append([
                Cell(r.model),
                Cell(r.augmentation),
                Cell(_shown(r.status, r.jaccard_mean_pct, r.jaccard_std_pct), bool(r.best_jaccard)),
                Cell(_shown(r.status, r.dice_mean_pct, r.dice_std_pct), bool(r.best_dice)),
                Cell(_shown(r.status, r.jaccard_image_mean_pct, r.jaccard_image_std_pct)),
                Cell(_shown(r.status, r.dice_image_mean_pct, r.dice_image_std_pct)),
                Cell(folds if r.status != "not_applicable" else NOT_APPLICABLE),
                Cell(format_mean_std(r.paper_jaccard_mean_pct, r.paper_jaccard_std_pct)),
                Cell(format_mean_std(r.paper_dice_mean_pct, r.paper_dice_std_pct)),
            ])
        references = paper_values.TABLE_I_REFERENCES.get(task, {})
        if references:
            quoted = "; ".join(
                f"{name} J {_published(v.jaccard)}" + (f", D {_published(v.dice)}" if v.dice else "")
                for name, v in references.items()
            )
            notes.append(f"Published comparisons for {task} (paper, Table I, not rerun): {quoted}.")
    if len(frame):
        notes.append(recipe_note(dict.fromkeys(frame["augmentation"])))
    protocol = f"{n_folds}-fold cross-validation" if n_folds else "cross-validation"
    return DisplayTable("table1", f"Table I: Jaccard and Dice on JSRT ({protocol}), percent", header, rows, notes)


# --------------------------------------------------------------------------- Table II


def _transfer_groups(trials: pd.DataFrame) -> list[tuple[str, str, str, str, str]]:
    """(target, task, model, training recipe, label budget) combinations of the transfer trials;
    the paper's one if none ran."""
    transfer = trials[trials["experiment"] == TRANSFER]
    groups = transfer[["target", "task", "model", RECIPE, LABEL_BUDGET]].drop_duplicates().itertuples(
        index=False, name=None)
    order = {name: i for i, name in enumerate(AUGMENTATIONS)}
    budgets = {name: i for i, name in enumerate(LABEL_BUDGETS)}
    found = sorted(groups, key=lambda g: (g[0] != paper_values.TABLE_II_TARGET, g[:3], order.get(g[3], len(order)),
                                          budgets.get(g[4], len(budgets))))
    return found or [(paper_values.TABLE_II_TARGET, "lungs", "unet", RunConfig.augmentation, RunConfig.label_budget)]


def _is_paper_setting(target: str, task: str, model: str) -> bool:
    return (target, task, model) == (paper_values.TABLE_II_TARGET, "lungs", "unet")


def table2_frame(results: Results, ci: str = "t") -> pd.DataFrame:
    """One row per (target, task, model, label fraction, method): target Jaccard in percent.

    The spread is across repetitions when at least two finished; with one, it is the spread
    across that repetition's test images (column `spread_across` says which).
    """
    label_free = label_free_methods(results.trials)
    frame = pd.DataFrame([_table2_row(group, fraction, method, cell, results.images, label_free, ci)
                          for group, fraction, method, cell in _table2_cells(results.trials)])
    frame["best_in_row"] = _is_best(frame, "jaccard_mean_pct",
                                    by=["target", "task", "model", "augmentation", "label_budget", "label_fraction"])
    return frame


def _table2_cells(trials: pd.DataFrame):
    """(group, label fraction, method, the cell's transfer trials) in display order: per group
    (_transfer_groups), every declared fraction and method and any other found, so that a partial
    sweep shows its gaps as empty cells."""
    transfer = trials[trials["experiment"] == TRANSFER]
    for group in _transfer_groups(trials):
        target, task, model, recipe, budget = group
        trials_of_group = transfer[(transfer["target"] == target) & (transfer["task"] == task)
                                   & (transfer["model"] == model) & (transfer[RECIPE] == recipe)
                                   & (transfer[LABEL_BUDGET] == budget)]
        fractions = _ordered(LABEL_FRACTIONS, trials_of_group["label_fraction"].dropna().astype(float))
        methods = _ordered(TRANSFER_METHODS, trials_of_group["method"].dropna())
        for fraction in fractions:
            for method in methods:
                yield group, fraction, method, trials_of_group[(trials_of_group["label_fraction"] == fraction)
                                                               & (trials_of_group["method"] == method)]


def _table2_row(group: tuple[str, str, str, str, str], fraction: float, method: str, cell: pd.DataFrame,
                images: pd.DataFrame, label_free: set[str], ci: str) -> dict:
    """Table II's row of one cell: who it is, how its trials ended, their target Jaccard, the
    paper's value where the setting is the paper's, and how its models were kept."""
    target, task, model, _, _ = group
    ok = cell[cell["status"] == "ok"]
    return {
        **_setting_columns(group, fraction),
        "method": method,
        "epochs": method_epochs(method, ok),
        "uses_no_target_labels": method in label_free,
        "status": cell_status(cell),
        **_cell_jaccard(cell, ok, images, ci),
        **_published_columns(target, task, model, fraction, method),
        **_how_kept(ok),
    }


def _setting_columns(group: tuple, fraction: float) -> dict:
    """The columns that name a Table II setting: target, task, model, recipe, budget and fraction."""
    target, task, model, recipe, budget = group
    return {"target": target, "task": task, "model": model, "augmentation": recipe, "label_budget": budget,
            "label_fraction": float(fraction)}


def _cell_jaccard(cell: pd.DataFrame, ok: pd.DataFrame, images: pd.DataFrame, ci: str) -> dict:
    """A cell's repetitions (finished, failed), test images and target Jaccard in percent: the
    mean of its repetitions' means, the spread and interval across repetitions when at least two
    finished, else across the test images (a bootstrap interval is always across the images)."""
    cell_images = _percent(images.loc[images["trial_id"].isin(ok["trial_id"]), "jaccard"])
    repetition_values = _percent(ok["test_jaccard_mean"])
    mean, std_across_repetitions, n_repetitions = mean_std(repetition_values)
    _, std_across_images, n_images = mean_std(cell_images)
    across_repetitions = n_repetitions >= 2
    if ci == "t":
        ci_low, ci_high = interval(repetition_values if across_repetitions else cell_images, "t")
        ci_unit = "repetitions" if across_repetitions else "images"
    else:
        ci_low, ci_high = interval(cell_images, "bootstrap")
        ci_unit = "images"
    return {
        "n_repetitions_ok": n_repetitions,
        "n_repetitions_failed": int((cell["status"] == "failed").sum()),
        "n_images": n_images,
        "jaccard_mean_pct": mean,
        "jaccard_std_pct": std_across_repetitions if across_repetitions else std_across_images,
        "spread_across": ("repetitions" if across_repetitions else "images") if n_repetitions else "",
        "ci_method": ci,
        "ci_unit": ci_unit,
        "jaccard_ci_low_pct": ci_low,
        "jaccard_ci_high_pct": ci_high,
    }


def _published_columns(target: str, task: str, model: str, fraction: float, method: str) -> dict:
    """The paper's Table II mean and std of the cell; NaN outside the paper's setting or where it printed none."""
    paper = paper_values.table_ii_value(target, fraction, method) if _is_paper_setting(target, task, model) else None
    return {"paper_jaccard_mean_pct": paper.mean if paper else math.nan,
            "paper_jaccard_std_pct": _std_or_nan(paper) if paper else math.nan}


def _how_kept(ok: pd.DataFrame) -> dict:
    """How a cell's finished trials chose their model: how many fell back to M_A as it is, each
    rule that decided (with its count of repetitions), and the target labels each read."""
    labels = ok["target_labels_used"].dropna().astype(int)
    counts = ok["selection_rule"].dropna().value_counts(sort=False)
    return {
        "n_fell_back": int((ok["selected_model"] == NO_ADAPTATION).sum()),
        "selection_rules": "; ".join(f"{rule} (x{count})" for rule, count in counts.items()),
        "target_labels_read": "/".join(str(n) for n in sorted(set(labels))),
    }


def table2_selection_display(frame: pd.DataFrame) -> DisplayTable:
    """Per Table II cell: which rule chose the model of each repetition, and the target labels it read."""
    header = ["Labels (%)", "Method", "Fell back to M_A", "Rule (repetitions)", "Target labels read"]
    rows: list = []
    for (target, task, model, recipe, budget), group in frame.groupby(
            ["target", "task", "model", "augmentation", "label_budget"], sort=False):
        rows.append(Section(f"{target}, {task}, {model}, training: {recipe}, label budget: {budget}"))
        for r in group[group["n_repetitions_ok"] > 0].itertuples():
            rows.append([Cell(format_fraction(r.label_fraction)), Cell(r.method),
                         Cell(f"{r.n_fell_back} of {r.n_repetitions_ok}"), Cell(r.selection_rules or "M_A as it is"),
                         Cell(r.target_labels_read or "0")])
    notes = ["Rule: how the kept model was chosen (the fixed schedule's end, or the best epoch by a criterion), "
             "then the guard's verdict against M_A as it is: the harm guard keeps the result unless it finds "
             "evidence of harm (source: a significant loss on the source validation images through the model as it "
             "is applied; collapse: of the shape plausibility of its target masks; labelled: on labelled images the "
             "run may choose with); the strict guard keeps it only when clearly better by its criterion.",
             "Target labels read: training and choosing together, per repetition."]
    return DisplayTable("table2_selection", "Table II, how each cell chose its model", header, rows, notes)


# How each label budget (cfg_label_budget) is named in Table II's notes.
LABEL_BUDGET_TEXT = {
    "honest": "honest (a run at f % reads only its f % of target labels: under the fixed schedule it trains on all "
              "of them; a run that chooses its epoch (selection=target) holds back a fifth of them, at least 2, when "
              "it has 5 or more, and otherwise chooses by the plausibility of its masks on the unlabelled target "
              "validation images, as at 0 %)",
    "paper": "the paper's (the labelled target validation split chooses the epoch at every fraction above 0, so a "
             "run uses more labels than its fraction)",
}


def label_budget_note(names) -> str:
    return ("Label budget: " + "; ".join(LABEL_BUDGET_TEXT.get(n, n) for n in names) + ". Every method that starts "
            "from M_A is judged against M_A as it is by its guard and keeps M_A when the guard refuses its result "
            "(table2_selection gives each cell's rule).")


def method_epochs(method: str, rows: pd.DataFrame) -> str:
    """The epochs `method`'s trials `rows` trained for: "30", "20+8" (warm-up + transfer), "0"."""
    if rows.empty:
        return ""
    if method in ("finetune", "scratch"):
        return "/".join(str(e) for e in sorted(set(rows["cfg_epochs"].astype(int))))
    if method == "source_only":
        return "0"
    column = "cfg_self_training_epochs" if method == "self_training" else "cfg_transfer_epochs"
    transfer = "/".join(str(e) for e in sorted(set(rows[column].astype(int))))
    if method == "proposed":
        return "/".join(str(e) for e in sorted(set(rows["cfg_warmup_epochs"].astype(int)))) + "+" + transfer
    return transfer


def epoch_budget_notes(trials: pd.DataFrame) -> list[str]:
    """What each transfer method trained for, from the configs the counted trials ran."""
    transfer = trials[(trials["experiment"] == TRANSFER) & (trials["status"] == "ok")]
    finetune = transfer[transfer["method"] == "finetune"]
    replay = len(finetune) > 0 and bool(finetune["cfg_source_replay"].all())
    start = {"finetune": " from M_A" + (" with source replay" if replay else ""),
             "scratch": " from random initialisation", "self_training": " from M_A",
             "proposed": " (translator warm-up + transfer) from M_A"}
    parts = [f"{method} {method_epochs(method, transfer[transfer['method'] == method])}{start[method]}"
             for method in _ordered(TRANSFER_METHODS, transfer["method"].dropna()) if method in start]
    if not parts:
        return []
    return ["Epochs per method (an epoch of finetune and scratch passes over as many labelled target images as the "
            "target training split has images, whatever the fraction; with source replay, fine-tuning's epoch also "
            "passes over the source training images): " + "; ".join(parts) + "."]


def label_free_methods(trials: pd.DataFrame) -> set[str]:
    """Methods that use no target labels: they finish at 0 % and are not applicable above it.

    Their one result (the 0 % row) is what they would score at any fraction, so the paired
    tests compare the proposed method against it at every fraction.
    """
    transfer = trials[trials["experiment"] == TRANSFER]
    free = set()
    for method, cells in transfer.groupby("method"):
        at_zero = cells["label_fraction"] == 0
        if (cells.loc[at_zero, "status"] == "ok").any() and (cells.loc[~at_zero, "status"] == "not_applicable").all() \
                and (~at_zero).any():
            free.add(method)
    return free


def paired_tests_frame(results: Results) -> pd.DataFrame:
    """Wilcoxon signed-rank, proposed vs each baseline, per label fraction, on per-image Jaccard.

    Pairs are (image_id, repetition): the same test image of the same split under both methods.
    """
    transfer_ok = results.ok[results.ok["experiment"] == TRANSFER]
    images = results.images.merge(
        transfer_ok[["trial_id", RECIPE, LABEL_BUDGET]].rename(columns={RECIPE: "augmentation",
                                                                        LABEL_BUDGET: "label_budget"}),
        on="trial_id", how="inner"
    )
    label_free = label_free_methods(results.trials)
    setting = ["target", "task", "model", "augmentation", "label_budget"]
    rows = []
    for (target, task, model, recipe, budget, fraction), cell in images.groupby(setting + ["label_fraction"],
                                                                                sort=True):
        proposed = cell[cell["method"] == PROPOSED]
        if proposed.empty:
            continue
        same_setting = images[(images["target"] == target) & (images["task"] == task) & (images["model"] == model)
                              & (images["augmentation"] == recipe) & (images["label_budget"] == budget)]
        baselines = {method: rows_ for method, rows_ in cell.groupby("method") if method != PROPOSED}
        for method in label_free - {PROPOSED}:
            baselines.setdefault(method, same_setting[(same_setting["method"] == method)
                                                      & (same_setting["label_fraction"] == 0)])
        # Only baselines with finished trials here: an n/a or missing cell has nothing to pair.
        for baseline in _ordered([m for m in TRANSFER_METHODS if m in baselines], baselines):
            test = wilcoxon_paired(proposed, baselines[baseline])
            rows.append(
                {
                    **_setting_columns((target, task, model, recipe, budget), fraction),
                    "baseline": baseline,
                    "n_pairs": test.n_pairs,
                    "statistic": test.statistic,
                    "p_value": test.p_value,
                    "median_difference_pct": test.median_difference * PERCENT,
                    "approximate": test.approximate,
                    "note": "; ".join(filter(None, [test.note, "against its 0 % row"
                                                    if baseline in label_free and fraction != 0 else ""])),
                }
            )
    columns = ["target", "task", "model", "augmentation", "label_budget", "label_fraction", "baseline", "n_pairs",
               "statistic", "p_value", "median_difference_pct", "approximate", "note"]
    return pd.DataFrame(rows, columns=columns)


def format_fraction(fraction: float) -> str:
    return f"{fraction:g}"


def format_p_value(p_value: float) -> str:
    """'p = 0.012' or 'p < 0.0001'."""
    if not np.isfinite(p_value):
        return f"p = {MISSING}"
    return f"p = {p_value:.2g}" if p_value >= 1e-4 else "p < 0.0001"


def not_applicable_reasons(trials: pd.DataFrame) -> list[str]:
    """The distinct reasons the sweep gave for its n/a transfer cells (kept in `error`)."""
    cells = trials[(trials["experiment"] == TRANSFER) & (trials["status"] == "not_applicable")]
    return sorted(set(cells["error"].dropna()))


VARIANT_TEXT = {
    "default": "the default variant (balanced adversarial training; its fixed schedule's last epoch, kept unless "
               "the harm guard finds it harmful next to M_A as it is)",
    "paper": "the paper-faithful variant (protocol.config.PAPER_TRANSFER: the follow-up code's loss weights, "
             "epoch chosen on source images through A → B → A)",
}


def proposed_variant_notes(trials: pd.DataFrame) -> list[str]:
    """Which variant of the proposed method the finished trials ran (read from their cfg_* columns),
    and how many of them fell back to no adaptation."""
    proposed = trials[(trials["experiment"] == TRANSFER) & (trials["method"] == PROPOSED) & (trials["status"] == "ok")]
    if proposed.empty:
        return []
    variants = proposed.apply(lambda row: transfer_variant({name: row[f"cfg_{name}"] for name in PAPER_TRANSFER
                                                            if f"cfg_{name}" in row}), axis=1)
    notes = []
    for variant, rows in proposed.groupby(variants, sort=True):
        fell_back = int((rows["selected_model"] == NO_ADAPTATION).sum())
        note = f"The proposed method ran {VARIANT_TEXT.get(variant, 'a custom variant (' + variant + ')')} in " \
               f"{len(rows)} finished trial(s)"
        if fell_back or TARGET_PLAUSIBILITY in set(rows["selection_criterion"].dropna()):
            note += f"; {fell_back} of them kept no adaptation (M_A on the target as it is, the source_only model)"
        saturated = int(rows["discriminators_saturated"].fillna(False).astype(bool).sum())
        if saturated:
            note += f"; in {saturated} the discriminators saturated (see their result.json)"
        notes.append(note + ".")
    return notes


def table2_display(frame: pd.DataFrame, paired: pd.DataFrame, reasons: list[str] = (),
                   variant_notes: list[str] = ()) -> DisplayTable:
    methods = list(dict.fromkeys(frame["method"]))
    paper_methods = [m for m in methods if any(k[1] == m for k in paper_values.TABLE_II)]
    header = ["Labels (%)"] + methods + [f"Paper {m}" for m in paper_methods]
    rows: list = []
    any_image_spread = any_fell_back = False
    for (target, task, model, recipe, budget), group in frame.groupby(
            ["target", "task", "model", "augmentation", "label_budget"], sort=False):
        rows.append(Section(f"{target}, {task}, {model}, training: {recipe}, label budget: {budget}"))
        for fraction, line in group.groupby("label_fraction", sort=False):
            by_method = {r.method: r for r in line.itertuples()}
            cells = [Cell(format_fraction(fraction))]
            for method in methods:
                r = by_method[method]
                text = _shown(r.status, r.jaccard_mean_pct, r.jaccard_std_pct)
                if r.status == "ok" and r.n_fell_back:
                    text += f" ({r.n_fell_back}/{r.n_repetitions_ok} M_A)"
                    any_fell_back = True
                if r.spread_across == "images" and r.status == "ok":
                    text += " †"
                    any_image_spread = True
                cells.append(Cell(text, bool(r.best_in_row)))
            for method in paper_methods:
                r = by_method[method]
                cells.append(Cell(format_mean_std(r.paper_jaccard_mean_pct, r.paper_jaccard_std_pct)
                                  if np.isfinite(r.paper_jaccard_mean_pct) else MISSING))
            rows.append(cells)
    notes = [
        "Target Jaccard, percent: mean ± sample standard deviation across repetitions (each repetition "
        "is one seeded 60/20/20 split of the target set; its value is the mean over its test images).",
    ]
    if any_fell_back:
        notes.append("(k/n M_A): in k of the cell's n repetitions the method's guard refused its result and it "
                     "kept M_A as it is (the source_only model); table2_selection gives each cell's rule and the "
                     "target labels it read.")
    if any_image_spread:
        notes.append("† only one repetition finished: ± is the standard deviation across that repetition's "
                     "test images (the paper's single-split convention), not across repetitions.")
    notes.append("Bold: the best method in each row. '—': no finished trial; never averaged as 0. "
                 "Paper values are the paper's Table II (Montgomery, U-Net, lungs; it has no source_only column).")
    if reasons:
        notes.append("'n/a', as the sweep recorded it: " + "; ".join(reasons) + ".")
    if len(frame):
        notes.append(recipe_note(dict.fromkeys(frame["augmentation"])) + " M_A and every baseline of a section "
                     "were trained with that section's recipe.")
    if len(frame):
        notes.append(label_budget_note(dict.fromkeys(frame["label_budget"])))
    notes.extend(variant_notes)
    notes.extend(_paired_notes(paired))
    return DisplayTable("table2", "Table II: cross-dataset transfer, target Jaccard (%) by fraction of "
                        "target training labels", header, rows, notes)


def _paired_notes(paired: pd.DataFrame) -> list[str]:
    if paired.empty:
        return ["Wilcoxon signed-rank tests: no per-image results of finished transfer trials to pair."]
    notes = ["Wilcoxon signed-rank tests (two-sided), proposed vs each baseline, per-image Jaccard paired "
             "on (image_id, repetition); exact p-values up to 50 pairs without ties, otherwise the normal "
             "approximation. Listed: p-value, number of pairs, median of proposed − baseline in points:"]
    for (target, task, model, recipe, budget, fraction), tests in paired.groupby(
        ["target", "task", "model", "augmentation", "label_budget", "label_fraction"], sort=False
    ):
        parts = []
        for t in tests.itertuples():
            if t.n_pairs == 0:
                parts.append(f"vs {t.baseline}: {MISSING} ({t.note})")
            else:
                extra = "".join(f", {x}" for x in (["normal approx."] if t.approximate else []) + [t.note] if x)
                parts.append(f"vs {t.baseline}: {format_p_value(t.p_value)} (n = {t.n_pairs}, "
                             f"Δ = {t.median_difference_pct:+.2f}{extra})")
        notes.append(f"{target}/{task}/{model}, training {recipe}, {budget} budget, "
                     f"{format_fraction(fraction)} % labels: "
                     + "; ".join(parts) + ".")
    return notes
