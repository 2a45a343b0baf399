"""Figures: labelled axes with units, legends and titles; real PNGs; overlays found and shown offline."""
import re

import numpy as np
import pytest
from PIL import Image

from analysis import figures, overlays, tables
from analysis.loading import load_results


@pytest.fixture(scope="module")
def results(fake_sweep):
    return load_results(fake_sweep.out_dir)


def test_figure7_is_labelled_and_trimmed_like_the_paper(results):
    fig = figures.figure7(tables.table1_frame(results))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["lungs", "heart", "clavicles"]
    for ax in axes:
        assert "Jaccard (%)" in ax.get_ylabel() and ax.get_xlabel()
    (legend,) = fig.legends
    assert {t.get_text() for t in legend.get_texts()} == {"ours: mean, 95 % CI", "paper (Table I): mean"}
    assert axes[0].get_ylim() == (75.0, 100.0)  # every lung value clears the paper's 75 % trim
    assert axes[2].get_ylim()[0] < 75.0  # FCN on clavicles does not: the axis goes lower
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["fcn\n(missing)", "unet", "segnet"]
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["fcn", "unet", "segnet"]  # one failed fold of 5
    assert "95 %" in fig._suptitle.get_text()


def test_figure8_has_one_line_per_method_and_the_paper(results):
    frame = tables.table2_frame(results, ci="bootstrap")
    fig = figures.figure8(frame)
    (ax,) = fig.get_axes()
    assert ax.get_xlabel() == "target training labels kept (%)" and ax.get_ylabel() == "target Jaccard (%)"
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert legend >= {"proposed", "finetune", "scratch", "source_only (no target labels)", "proposed (paper)"}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1.25", "2.5", "5", "10", "20", "50", "100"]
    assert "bootstrap across test images" in fig._suptitle.get_text()
    # The plotted means are the table's (finetune at 0 % is n/a: no point there).
    finetune = next(line for line in ax.get_lines() if line.get_label() == "finetune")
    expected = frame[frame.method == "finetune"].sort_values("label_fraction")["jaccard_mean_pct"]
    np.testing.assert_allclose(finetune.get_ydata(), expected.dropna())
    np.testing.assert_array_equal(finetune.get_xdata(), np.arange(1, 8))  # nothing drawn at 0 %
    # source_only runs only at 0 %: its one result is drawn flat across every fraction.
    source_only = next(line for line in ax.get_lines() if line.get_label().startswith("source_only"))
    at_zero = frame[(frame.method == "source_only") & (frame.label_fraction == 0)]["jaccard_mean_pct"].item()
    np.testing.assert_allclose(source_only.get_ydata(), at_zero)


def test_report_pngs_are_real_images(built_report):
    for name in ("fig7_jaccard_ci.png", "fig8_transfer_ci.png", "fig9_overlays.png"):
        with Image.open(built_report.parent / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert min(pixels.shape) > 300 and pixels.std() > 5, name


def test_overlays_are_found_labelled_and_fig9_prefers_target_images(fake_sweep, results):
    found = overlays.find_saved_images(fake_sweep.out_dir, results.trials)
    kinds = [image.kind for image in found]
    assert kinds.count("overlays") == 5 and kinds.count("translations") == 3
    transfer = [image for image in found if image.is_transfer]
    assert all("proposed → montgomery" in image.label and "0 % labels" in image.label for image in transfer)
    fig = overlays.figure9(found)
    assert len([ax for ax in fig.get_axes() if ax.images]) == 3  # the JSRT overlays stay out of Fig. 9
    assert "0 % target labels" in fig._suptitle.get_text()
    assert overlays.figure9([image for image in found if not image.is_transfer]) is not None


def test_index_html_is_one_offline_page(built_report):
    page = built_report.read_text()
    assert page.count("data:image/png;base64,") == 3  # the three figures are embedded
    assert not re.search(r"(src|href)=['\"]https?:", page)
    for relative in re.findall(r"<img src='([^']+)'", page):
        assert (built_report.parent / relative).is_file(), relative
    for heading in ("Table I", "Table II", "Fig. 7-style", "Fig. 8-style", "Fig. 9-style", "Failures",
                    "Configuration"):
        assert heading in page
    assert "CUDA out of memory" in page and "profile <b>smoke</b>" in page


def test_fig9_order_takes_tasks_in_turn_among_the_best_candidates(tmp_path):
    def saved(task, method, name):
        run = {"experiment": "transfer", "task": task, "method": method, "label_fraction": 0.0}
        return overlays.SavedImage(tmp_path / f"{task}-{method}-{name}.png", "overlays", tmp_path, run)

    images = [saved("lungs", "proposed", n) for n in "abc"] + [saved("heart", "proposed", "a"),
                                                              saved("clavicles", "finetune", "a")]
    order = [(image.run["task"], image.run["method"]) for image in overlays.in_fig9_order(images)]
    assert order[:2] in ([("heart", "proposed"), ("lungs", "proposed")], [("lungs", "proposed"), ("heart", "proposed")])
    assert order[-1] == ("clavicles", "finetune")  # not the proposed method: after every proposed image
