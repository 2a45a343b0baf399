"""Acceptance: every number in Table I and Table II equals a recomputation done here, directly
with pandas / scipy from the Parquet files, without any of the analysis package's code."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from analysis.tables import format_fraction


def read_markdown_table(path) -> dict[str, dict[str, list[str]]]:
    """{section: {first cell: [cells...]}} from a rendered Markdown table, bold markers removed."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if all(c == "" for c in cells[1:]):
            current = sections.setdefault(cells[0], {})
        elif current is not None:
            current[cells[0]] = cells
    return sections


def bold_cells(path) -> set[tuple[str, str, int]]:
    found, section = set(), None
    for line in path.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(c == "" for c in cells[1:]):
            section = cells[0].replace("**", "")
            continue
        found |= {(section, cells[0], i) for i, c in enumerate(cells) if i and c.startswith("**")}
    return found


def shown(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}" if np.isfinite(std) else f"{mean:.2f}"


@pytest.fixture(scope="module")
def parquet(fake_sweep):
    trials = pd.read_parquet(fake_sweep.out_dir / "results" / "trials.parquet")
    images = pd.read_parquet(fake_sweep.out_dir / "results" / "images.parquet")
    return trials, images


def test_table1_equals_direct_recomputation(built_report, parquet):
    trials, images = parquet
    report_dir = built_report.parent
    csv = pd.read_csv(report_dir / "table1.csv").set_index(["task", "model"])
    markdown = read_markdown_table(report_dir / "table1.md")

    finished = trials[(trials.experiment == "segmentation") & (trials.status == "ok")]
    per_fold = finished.groupby(["task", "model"]).agg(
        j_mean=("test_jaccard_mean", "mean"), j_std=("test_jaccard_std", "size"),
        jaccard_std=("test_jaccard_mean", "std"), d_mean=("test_dice_mean", "mean"),
        d_std=("test_dice_mean", "std"), folds=("fold", "nunique"))
    per_image = images.merge(finished[["trial_id"]], on="trial_id").groupby(["task", "model"]).agg(
        j_mean=("jaccard", "mean"), j_std=("jaccard", "std"), d_mean=("dice", "mean"), d_std=("dice", "std"))
    assert len(per_fold) == 8  # nine cells, one never ran

    for (task, model), expected in per_fold.iterrows():
        got = csv.loc[(task, model)]
        assert got["jaccard_mean_pct"] == pytest.approx(100 * expected.j_mean, abs=1e-9)
        assert got["jaccard_std_pct"] == pytest.approx(100 * expected.jaccard_std, abs=1e-9)
        assert got["dice_mean_pct"] == pytest.approx(100 * expected.d_mean, abs=1e-9)
        assert got["dice_std_pct"] == pytest.approx(100 * expected.d_std, abs=1e-9)
        assert got["n_folds_ok"] == expected.folds
        image_expected = per_image.loc[(task, model)]
        assert got["jaccard_image_mean_pct"] == pytest.approx(100 * image_expected.j_mean, abs=1e-9)
        assert got["jaccard_image_std_pct"] == pytest.approx(100 * image_expected.j_std, abs=1e-9)

        row = markdown[task][model]
        assert row[1] == "robust"
        assert row[2] == shown(100 * expected.j_mean, 100 * expected.jaccard_std)
        assert row[3] == shown(100 * expected.d_mean, 100 * expected.d_std)
        assert row[4] == shown(100 * image_expected.j_mean, 100 * image_expected.j_std)
        assert row[5] == shown(100 * image_expected.d_mean, 100 * image_expected.d_std)

    # The best model per task and metric is bold, and only it.
    bold = bold_cells(report_dir / "table1.md")
    for task, group in per_fold.groupby(level="task"):
        for column, metric in ((2, "j_mean"), (3, "d_mean")):
            best_model = group[metric].idxmax()[1]
            assert {(task, m, column) for m in group.index.get_level_values("model")} & bold == {
                (task, best_model, column)}

    # The published values sit alongside (Table I of the paper).
    assert markdown["lungs"]["unet"][7:9] == ["96.02 ± 0.33", "97.96 ± 0.17"]
    assert markdown["clavicles"]["fcn"][7] == "75.52 ± 1.03"


def test_table1_missing_and_failed_cells_are_not_numbers(built_report, fake_sweep):
    report_dir = built_report.parent
    csv = pd.read_csv(report_dir / "table1.csv").set_index(["task", "model"])
    markdown = read_markdown_table(report_dir / "table1.md")
    task, model = fake_sweep.missing_segmentation_cell
    assert csv.loc[(task, model), "status"] == "missing"
    assert math.isnan(csv.loc[(task, model), "jaccard_mean_pct"])
    assert markdown[task][model][2:6] == ["—"] * 4
    task, model, failed_fold = fake_sweep.failed_segmentation_trial
    assert csv.loc[(task, model), "n_folds_failed"] == 1
    assert markdown[task][model][6] == "4 (1 failed)"
    failures = pd.read_csv(report_dir / "failures.csv")
    assert set(failures["trial_id"]) == {f"seg-{task}-{model}-f{failed_fold}",
                                         "tr-{1}-{0:g}-r{2}".format(*fake_sweep.failed_transfer_trial)}


def test_table2_equals_direct_recomputation(built_report, parquet, fake_sweep):
    trials, images = parquet
    report_dir = built_report.parent
    csv = pd.read_csv(report_dir / "table2.csv").set_index(["label_fraction", "method"])
    markdown = read_markdown_table(report_dir / "table2.md")[
        "montgomery, lungs, unet, training: robust, label budget: honest"]
    header = next(line for line in (report_dir / "table2.md").read_text().splitlines() if line.startswith("| Labels"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]

    finished = trials[(trials.experiment == "transfer") & (trials.status == "ok")]
    checked = 0
    for (fraction, method), cell in finished.groupby(["label_fraction", "method"]):
        values = 100 * cell["test_jaccard_mean"]
        if len(cell) >= 2:
            mean, std, marker = values.mean(), values.std(), ""
        else:
            cell_images = images[images.trial_id.isin(cell.trial_id)]
            mean, std, marker = values.iloc[0], 100 * cell_images["jaccard"].std(), " †"
        got = csv.loc[(fraction, method)]
        assert got["jaccard_mean_pct"] == pytest.approx(mean, abs=1e-9)
        assert got["jaccard_std_pct"] == pytest.approx(std, abs=1e-9)
        assert got["n_repetitions_ok"] == len(cell)
        fell_back = int((cell["selected_model"] == "no_adaptation").sum())
        marker = (f" ({fell_back}/{len(cell)} M_A)" if fell_back else "") + marker
        assert markdown[f"{fraction:g}"][columns.index(method)] == shown(mean, std) + marker
        checked += 1
    assert checked == len(finished.groupby(["label_fraction", "method"])) > 20

    assert csv.loc[fake_sweep.single_repetition_cell, "spread_across"] == "images"
    assert csv.loc[(1.25, "proposed"), "spread_across"] == "repetitions"
    assert markdown["0"][columns.index("Paper proposed")] == "88.20 ± 9.80"
    assert markdown["0"][columns.index("Paper finetune")] == "4.30 ± 4.13"


def test_table2_shows_not_applicable_and_missing_cells(built_report, fake_sweep):
    report_dir = built_report.parent
    csv = pd.read_csv(report_dir / "table2.csv").set_index(["label_fraction", "method"])
    markdown = read_markdown_table(report_dir / "table2.md")[
        "montgomery, lungs, unet, training: robust, label budget: honest"]
    header = next(line for line in (report_dir / "table2.md").read_text().splitlines() if line.startswith("| Labels"))
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    for method in fake_sweep.not_applicable_at_zero:
        assert csv.loc[(0.0, method), "status"] == "not_applicable"
        assert markdown["0"][columns.index(method)] == "n/a"
    fraction, method = fake_sweep.missing_transfer_cell
    assert csv.loc[(fraction, method), "status"] == "missing"
    assert math.isnan(csv.loc[(fraction, method), "jaccard_mean_pct"])
    assert markdown[f"{fraction:g}"][columns.index(method)] == "—"
    fraction, method, _ = fake_sweep.failed_transfer_trial
    assert csv.loc[(fraction, method), "n_repetitions_failed"] == 1
    assert not [cell for row in markdown.values() for cell in row[1:] if cell.startswith("0.00")]


def test_wilcoxon_p_values_pair_images_and_repetitions(built_report, parquet, fake_sweep):
    trials, images = parquet
    report_dir = built_report.parent
    reported = pd.read_csv(report_dir / "paired_tests.csv").set_index(["label_fraction", "baseline"])
    finished = trials[(trials.experiment == "transfer") & (trials.status == "ok")]
    counted = images.merge(finished[["trial_id"]], on="trial_id")
    # The label-free baseline has one result, its 0 % row, which every fraction is compared with.
    label_free = counted[(counted.method == fake_sweep.label_free_method) & (counted.label_fraction == 0)]
    n_tests = 0
    for fraction, cell in counted.groupby("label_fraction"):
        proposed = cell[cell.method == "proposed"]
        for baseline in (set(cell.method) | {fake_sweep.label_free_method}) - {"proposed"}:
            others = label_free if baseline == fake_sweep.label_free_method else cell[cell.method == baseline]
            pairs = proposed.merge(others, on=["image_id", "repetition"])
            differences = pairs["jaccard_x"] - pairs["jaccard_y"]
            exact = len(pairs) <= 50 and differences.abs().nunique() == len(pairs) and (differences != 0).all()
            expected = scipy_stats.wilcoxon(pairs["jaccard_x"], pairs["jaccard_y"],
                                            method="exact" if exact else "asymptotic")
            got = reported.loc[(fraction, baseline)]
            assert got["n_pairs"] == len(pairs)
            assert got["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
            n_tests += 1
    assert len(reported) == n_tests
    notes = (report_dir / "table2.md").read_text()
    p = reported.loc[(1.25, "source_only"), "p_value"]
    assert re.search(rf"1\.25 % labels:.*vs source_only: p = {p:.2g} \(n = 36, .*against its 0 % row", notes)


def test_latex_tables_are_plain_ascii_with_the_same_numbers(built_report):
    """pdflatex without unicode packages must read them; the numbers are the Markdown ones."""
    for name in ("table1", "table2"):
        tex = (built_report.parent / f"{name}.tex").read_text()
        assert tex.isascii(), [c for c in tex if not c.isascii()]
        markdown = read_markdown_table(built_report.parent / f"{name}.md")
        for rows in markdown.values():
            for cell in (c for row in rows.values() for c in row[1:] if "±" in c):
                assert cell.replace("±", "$\\pm$").replace(" †", " \\dag{}").replace("M_A", "M\\_A") in tex


def _markdown_rows(path) -> list[list[str]]:
    return [[c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_table2_says_how_each_cell_chose_its_model_and_the_labels_it_read(built_report, fake_sweep):
    from tests.analysis.conftest import FELL_BACK_RULE, KEPT_RULE

    fraction, method, _ = fake_sweep.fell_back_trial
    n = fake_sweep.n_repetitions
    table2 = _markdown_rows(built_report.parent / "table2.md")
    header = table2[0]
    row = next(r for r in table2 if r[0] == format_fraction(fraction))
    assert row[header.index(method)].endswith(f"(1/{n} M_A)")
    assert "M_A" not in row[header.index("proposed")]  # no repetition of it fell back
    selection = _markdown_rows(built_report.parent / "table2_selection.md")
    fell_back = next(r for r in selection if r[0] == format_fraction(fraction) and r[1] == method)
    assert fell_back[2] == f"1 of {n}"
    assert fell_back[3] == f"{KEPT_RULE} (x{n - 1}); {FELL_BACK_RULE} (x1)"
    labelled = next(r for r in selection if r[0] == "100" and r[1] == "finetune")
    assert labelled[4] == "82" and labelled[3] == f"{KEPT_RULE} (x{n})"
    assert "how each cell chose its model" in (built_report.parent / "index.html").read_text()
