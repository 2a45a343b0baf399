"""Fig. 7- and Fig. 8-style confidence-interval plots, drawn from the tidy tables.

Figures read only the numbers `analysis.tables` computed, so a plotted interval is the one
the CSV lists. matplotlib is used headless (Agg): the report runs on servers without a display.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.tables import format_fraction  # noqa: E402

# The paper trims Fig. 7 at 75 %; we do the same whenever every plotted value clears it.
PAPER_TRIM_PCT = 75.0
METHOD_COLOURS = {"proposed": "tab:blue", "self_training": "tab:purple", "finetune": "tab:orange",
                  "scratch": "tab:green", "source_only": "tab:red"}
CI_DESCRIPTIONS = {
    ("t", "folds"): "t-interval across folds",
    ("t", "repetitions"): "t-interval across repetitions",
    ("t", "images"): "t-interval across test images",
    ("bootstrap", "images"): "bootstrap across test images",
}
DPI = 110
STATUS_WORDS = {"not_applicable": "n/a", "failed": "failed", "missing": "missing"}


def _lower_limit(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return 0.0
    lowest = min(finite)
    if lowest >= PAPER_TRIM_PCT:
        return PAPER_TRIM_PCT
    return max(0.0, math.floor((lowest - 2.0) / 5.0) * 5.0)


def _ci_label(frame: pd.DataFrame) -> str:
    kinds = sorted({CI_DESCRIPTIONS.get((m, u), f"{m} across {u}") for m, u in
                    zip(frame["ci_method"], frame["ci_unit"])})
    return ", ".join(kinds)


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def figure7(table1: pd.DataFrame) -> Figure:
    """Per task, each model's mean Jaccard with its 95 % CI; the paper's mean as a hollow marker."""
    tasks = list(dict.fromkeys(table1["task"]))
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = table1[table1["task"] == task].reset_index(drop=True)
        x = np.arange(len(rows))
        mean = rows["jaccard_mean_pct"].to_numpy(float)
        low = rows["jaccard_ci_low_pct"].to_numpy(float)
        high = rows["jaccard_ci_high_pct"].to_numpy(float)
        has_ci = np.isfinite(low) & np.isfinite(high)
        ax.errorbar(x[has_ci], mean[has_ci], yerr=[mean[has_ci] - low[has_ci], high[has_ci] - mean[has_ci]],
                    fmt="o", color="tab:blue", capsize=6, lw=2, label="ours: mean, 95 % CI")
        no_ci = np.isfinite(mean) & ~has_ci
        if no_ci.any():
            ax.plot(x[no_ci], mean[no_ci], "o", color="tab:blue", mfc="white", label="ours: mean (too few for a CI)")
        paper = rows["paper_jaccard_mean_pct"].to_numpy(float)
        if np.isfinite(paper).any():
            # Shifted right so that the paper's marker never hides our interval.
            ax.plot(x + 0.18, paper, "D", color="black", mfc="none", ms=7, label="paper (Table I): mean")
        bottom = _lower_limit(list(low) + list(mean[~has_ci]) + list(paper))
        ax.set_ylim(bottom, 100.0)
        # A cell without a number says why under its tick, where no marker can cover it.
        several = rows["augmentation"].nunique() > 1
        names = [f"{model}\n{recipe}" if several else model
                 for model, recipe in zip(rows["model"], rows["augmentation"])]
        ax.set_xticks(x, [name if status == "ok" else f"{name}\n({STATUS_WORDS.get(status, 'missing')})"
                          for name, status in zip(names, rows["status"])])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("segmentation network" + (" and training" if several else ""))
        ax.set_ylabel("Jaccard (%)" + (f", axis trimmed at {bottom:g} %" if bottom > 0 else ""))
        ax.set_title(task)
        ax.grid(axis="y", alpha=0.3)
    _figure_legend(fig, axes[0])
    fig.suptitle(f"Fig. 7-style: 95 % confidence intervals of Jaccard on JSRT ({_ci_label(table1)})")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _figure_legend(fig: Figure, axes) -> None:
    """One legend under all panels, so that it never covers a panel's data."""
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="lower center", ncol=min(4, len(entries)), fontsize=9)


def epochs_text(rows: pd.DataFrame) -> str:
    """"epochs: finetune 30, scratch 30, proposed 20+8" for one panel's methods."""
    per_method = {m: e for m, e in zip(rows["method"], rows["epochs"]) if e}
    return "epochs: " + ", ".join(f"{m} {e}" for m, e in per_method.items()) if per_method else "epochs: none ran"


def _annotate_cells(ax, x: np.ndarray, mean: np.ndarray, line: pd.DataFrame, colour) -> None:
    """Beside each point of a method that reads target labels: how many it read, and how many
    repetitions fell back to M_A as it is (Table II's table2_selection has the rules in full)."""
    for position, value, labels, fell_back, n in zip(x, mean, line["target_labels_read"], line["n_fell_back"],
                                                     line["n_repetitions_ok"]):
        if not np.isfinite(value):
            continue
        text = f"{labels or 0}" + (f", M_A {fell_back}/{n}" if fell_back else "")
        ax.annotate(text, (position, value), textcoords="offset points", xytext=(4, -9), fontsize=6, color=colour)


def figure8(table2: pd.DataFrame) -> Figure:
    """Target Jaccard against label fraction, one line and 95 % CI band per method; paper dashed."""
    groups = list(dict.fromkeys(zip(table2["target"], table2["task"], table2["model"], table2["augmentation"],
                                    table2["label_budget"])))
    fig, axes = plt.subplots(1, len(groups), figsize=(9.5 * len(groups), 4.8), squeeze=False)
    for ax, (target, task, model, recipe, budget) in zip(axes[0], groups):
        rows = table2[(table2["target"] == target) & (table2["task"] == task) & (table2["model"] == model)
                      & (table2["augmentation"] == recipe) & (table2["label_budget"] == budget)]
        fractions = list(dict.fromkeys(rows["label_fraction"]))
        # Fractions span 0 to 100 unevenly (1.25, 2.5, 5, ...): evenly spaced positions, as in the paper.
        position = {f: i for i, f in enumerate(fractions)}
        plotted = []
        for method, line in rows.groupby("method", sort=False):
            line = line.sort_values("label_fraction")
            x = line["label_fraction"].map(position).to_numpy(float)
            colour = METHOD_COLOURS.get(method)
            mean = line["jaccard_mean_pct"].to_numpy(float)
            low = line["jaccard_ci_low_pct"].to_numpy(float)
            high = line["jaccard_ci_high_pct"].to_numpy(float)
            if line["uses_no_target_labels"].all():
                # Its one result holds at every fraction: a flat reference line, not a single dot.
                at_zero = line["label_fraction"].to_numpy() == 0
                mean, low, high = (np.full_like(v, v[at_zero][0]) for v in (mean, low, high))
                drawn = ax.plot(x, mean, "-", color=colour, lw=1.5, label=f"{method} (no target labels)")[0]
                ax.fill_between(x, low, high, color=drawn.get_color(), alpha=0.18, lw=0)
            else:
                # The line joins the fractions that have a number; markers show which ones do.
                has_mean = np.isfinite(mean)
                drawn = ax.plot(x[has_mean], mean[has_mean], "o-", color=colour, label=method)[0]
                has_ci = has_mean & np.isfinite(low) & np.isfinite(high)
                ax.fill_between(x[has_ci], low[has_ci], high[has_ci], color=drawn.get_color(), alpha=0.18, lw=0)
                _annotate_cells(ax, x, mean, line, drawn.get_color())
            plotted += list(low) + list(mean)
            paper = line["paper_jaccard_mean_pct"].to_numpy(float)
            if np.isfinite(paper).any():
                ax.plot(x, paper, "x--", color=drawn.get_color(), alpha=0.7, lw=1, label=f"{method} (paper)")
                plotted += list(paper)
        ax.set_xticks(range(len(fractions)), [format_fraction(f) for f in fractions])
        ax.set_xlabel("target training labels kept (%)")
        ax.set_ylabel("target Jaccard (%)")
        ax.set_ylim(_lower_limit(plotted), 100.0)
        ax.set_title(f"{target}, {task}, {model}, training: {recipe}\nlabel budget: {budget}; "
                     f"{epochs_text(rows)}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"Fig. 8-style: transfer from JSRT, target Jaccard with 95 % CI bands\n({_ci_label(table2)})\n"
                 "beside each point: the target labels it read, and 'M_A k/n' where its guard kept M_A as it is "
                 "in k of n repetitions", fontsize=10)
    fig.tight_layout()
    return fig
