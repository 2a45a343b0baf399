"""`build_report(out_dir)`: the tables, figures and one offline page from `OUT/results/*.parquet`.

Everything lands in `OUT/report/`: table1/table2 in the chosen text formats, CSVs of the
numbers behind them (percent, full precision), the figures as PNG and `index.html`, which
embeds the figures so it opens anywhere, offline.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

from analysis import figures, overlays, render, tables
from analysis.choices import CI_METHODS, FORMATS
from analysis.loading import Results, load_results
from analysis.stats import BOOTSTRAP_RESAMPLES
from errors import UserError
from protocol.results import CONFIG_COLUMNS, SCHEMA_VERSION

FIGURE_FILES = {"fig7": "fig7_jaccard_ci.png", "fig8": "fig8_transfer_ci.png", "fig9": "fig9_overlays.png"}
FAILURE_COLUMNS = ["trial_id", "experiment", "task", "model", "method", "label_fraction", "fold", "repetition",
                   "error"]


def build_report(out_dir: str | Path, formats: Iterable[str] = FORMATS, ci: str = "t",
                 profile: str | None = None) -> Path:
    """Write `OUT/report/`; return the path of index.html (the report directory when html is not asked for)."""
    started = time.perf_counter()
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if ci not in CI_METHODS:
        raise UserError(f"unknown confidence-interval method {ci!r}; choose from {', '.join(CI_METHODS)}")
    results = load_results(out_dir, profile=profile)
    report_dir = results.out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)

    table1 = tables.table1_frame(results, ci)
    table2 = tables.table2_frame(results, ci)
    paired = tables.paired_tests_frame(results)
    display = [tables.table1_display(table1, tables.cross_validation_folds(results.trials)),
               tables.table2_display(table2, paired, tables.not_applicable_reasons(results.trials),
                                     tables.proposed_variant_notes(results.trials)
                                     + tables.epoch_budget_notes(results.trials)),
               tables.table2_selection_display(table2)]
    failures = results.failed.reindex(columns=FAILURE_COLUMNS)

    for table in display:
        if "md" in formats:
            (report_dir / f"{table.name}.md").write_text(render.to_markdown(table))
        if "tex" in formats:
            (report_dir / f"{table.name}.tex").write_text(render.to_latex(table))
    if "csv" in formats:
        table1.to_csv(report_dir / "table1.csv", index=False)
        table2.to_csv(report_dir / "table2.csv", index=False)
        paired.to_csv(report_dir / "paired_tests.csv", index=False)
        failures.to_csv(report_dir / "failures.csv", index=False)

    figure_paths = {
        "fig7": figures.save(figures.figure7(table1), report_dir / FIGURE_FILES["fig7"]),
        "fig8": figures.save(figures.figure8(table2), report_dir / FIGURE_FILES["fig8"]),
    }
    saved_images = overlays.find_saved_images(results.out_dir, results.trials)
    fig9_path = report_dir / FIGURE_FILES["fig9"]
    fig9_path.unlink(missing_ok=True)  # a stale montage from an earlier build would mislead
    montage = overlays.figure9(saved_images)
    figure_paths["fig9"] = None if montage is None else figures.save(montage, fig9_path)
    if "html" not in formats:
        return report_dir
    copied = overlays.copy_into_report(saved_images, report_dir)
    page = _page(results, display, (table1, table2), failures, figure_paths, saved_images, copied, ci,
                 time.perf_counter() - started)
    index = report_dir / "index.html"
    index.write_text(page)
    return index


# --------------------------------------------------------------------------- the page

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table.results, table.summary { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
table.results td, table.results th, table.summary td, table.summary th { border: 1px solid #ccc; padding: 3px 8px; }
table.results td { text-align: right; } table.results td:first-child { text-align: left; }
tr.section th { background: #eef; text-align: left; }
caption { font-weight: bold; text-align: left; padding: 0.3em 0; }
ul.notes { font-size: 0.85em; color: #444; }
img.figure { max-width: 100%; border: 1px solid #ddd; }
div.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
div.gallery figure { margin: 0; width: 180px; font-size: 0.75em; }
div.gallery img { width: 180px; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
"""


def _embedded_png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="figure" alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, classes="summary", border=0, na_rep="—", escape=True)


def _page(results: Results, display, frames, failures: pd.DataFrame, figure_paths: dict, saved_images, copied,
          ci: str, seconds: float) -> str:
    esc = html.escape
    table1, table2 = frames
    title = f"cxrsweep report: {results.out_dir.name}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    parts.append(f"<p>Results from <code>{esc(str(results.out_dir / 'results'))}</code>, profile "
                 f"<b>{esc(str(results.profile))}</b>, confidence intervals: <b>{esc(ci)}</b>. "
                 f"Built in {seconds:.1f} s.</p>")
    for note in results.notes:
        parts.append(f"<p><b>Note:</b> {esc(note)}</p>")
    parts.append("<h2>Run summary</h2>" + _frame_html(_status_counts(results.trials)) + _wall_time(results.trials))

    for table in display:
        parts.append(f"<h2>{esc(table.caption.split(':')[0])}</h2>" + render.to_html(table))
        if table.name == "table2_selection":
            continue
        if table.name == "table1":
            parts.append("<h3>Fig. 7-style confidence intervals</h3>" + _embedded_png(figure_paths["fig7"])
                         + _interval_caption(table1, "n_folds_ok", "folds", "a cell with one fold has none"))
        else:
            parts.append("<h3>Fig. 8-style confidence intervals</h3>" + _embedded_png(figure_paths["fig8"])
                         + _interval_caption(table2, "n_repetitions_ok", "repetitions",
                                             "across test images where only one repetition finished"))

    parts.append("<h2>Fig. 9-style overlays</h2>")
    if figure_paths["fig9"] is None:
        parts.append("<p>No run saved overlay images (looked for <code>OUT/runs/**/overlays/*.png</code>).</p>")
    else:
        parts.append("<p>Prediction filled in red, ground truth (where the target has labels) outlined in green.</p>")
        parts.append(_embedded_png(figure_paths["fig9"]))
    for kind in overlays.KINDS:
        shown = [(image, relative) for image, relative in copied if image.kind == kind]
        total = sum(1 for image in saved_images if image.kind == kind)
        if not shown:
            continue
        parts.append(f"<h3>All saved {kind} ({len(shown)} shown of {total})</h3><div class='gallery'>")
        parts.extend(f"<figure><img src='{esc(relative)}' alt='{esc(image.label)}'>"
                     f"<figcaption>{esc(image.label).replace(chr(10), '<br>')}</figcaption></figure>"
                     for image, relative in shown)
        parts.append("</div>")

    parts.append("<h2>Failures</h2>")
    if failures.empty:
        parts.append("<p>No trial failed.</p>")
    else:
        shown_failures = failures.assign(error=failures["error"].fillna("").str.slice(0, 300))
        parts.append(f"<p>{len(failures)} trial(s) failed; their cells are missing, never averaged.</p>"
                     + _frame_html(shown_failures))
    if len(results.superseded):
        parts.append("<h3>Superseded rows (retries of the same cell, not counted)</h3>"
                     + _frame_html(results.superseded.reindex(columns=["trial_id", "status"] + FAILURE_COLUMNS[1:-1])))

    parts.append("<h2>Configuration</h2>" + _config_summary(results.trials))
    parts.append(f"<p style='font-size:0.8em;color:#666'>Parquet schema version {SCHEMA_VERSION}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _interval_caption(frame: pd.DataFrame, count_column: str, unit: str, single_unit: str) -> str:
    """Say how many units each t-interval rests on: with two, t(0.975, 1) = 12.7 makes it very wide."""
    counts = frame.loc[frame["status"] == "ok", count_column]
    if frame.empty or (frame["ci_method"] == "bootstrap").all():
        return (f"<p>Intervals: percentile bootstrap of the mean over test images ({BOOTSTRAP_RESAMPLES} "
                "resamples, seeded).</p>")
    if counts.empty:
        return ""
    low, high = int(counts.min()), int(counts.max())
    span = f"{low}" if low == high else f"{low} to {high}"
    text = f"Intervals: Student-t across {span} {unit} per cell ({single_unit})."
    if low <= 3:
        text += (" With so few units the t quantile is large (12.7 for two), so the intervals are wide; "
                 "<code>--ci bootstrap</code> resamples test images instead.")
    return f"<p>{text}</p>"


def _status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    counts = trials.groupby(["experiment", "status"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["ok", "failed", "not_applicable"], fill_value=0)
    counts.columns.name = None
    counts = counts.reset_index()
    durations = trials.groupby("experiment")["duration_s"].sum(min_count=1).round(1)
    counts["compute time (s)"] = counts["experiment"].map(durations)
    devices = trials.groupby("experiment")["device"].agg(lambda d: ", ".join(sorted(set(d.dropna()))))
    counts["devices"] = counts["experiment"].map(devices)
    return counts


def _wall_time(trials: pd.DataFrame) -> str:
    """First start to last finish of the counted trials, when the sweep recorded them."""
    started, finished = trials["started_at"].min(), trials["finished_at"].max()
    if pd.isna(started) or pd.isna(finished):
        return ""
    return f"<p>Sweep wall-clock time, first trial start to last finish: {(finished - started) / 60:.1f} min.</p>"


def _config_summary(trials: pd.DataFrame) -> str:
    """The cfg_* columns: one value for fields every trial shares, the distinct values for the rest."""
    rows = []
    for column in CONFIG_COLUMNS:
        values = trials[column].dropna().unique() if column in trials else []
        rows.append({
            "field": column.removeprefix("cfg_"),
            "value(s)": ", ".join(sorted(repr(v) if v == "" else str(v) for v in values)) or "—",
            "varies across trials": "yes" if len(values) > 1 else "",
        })
    summary = pd.DataFrame(rows)
    text = _frame_html(summary)
    example = trials["config_json"].dropna()
    if len(example):
        try:
            pretty = json.dumps(json.loads(example.iloc[0]), indent=2, sort_keys=True)
        except json.JSONDecodeError:
            pretty = example.iloc[0]
        text += (f"<details><summary>Full effective config of trial "
                 f"{html.escape(str(trials.loc[example.index[0], 'trial_id']))}"
                 f" (config_json)</summary><pre>{html.escape(pretty)}</pre></details>")
    return text
