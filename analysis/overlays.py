"""Fig. 9-style overlays: the mask images the runs saved, found, labelled and laid out.

Lookup convention (the sweep writes, the report reads):
- every run directory lives somewhere under `OUT/runs/`;
- a run saves target images with their predicted masks drawn on them as
  `<run_dir>/overlays/*.png`, and translated images (target -> source style) as
  `<run_dir>/translations/*.png`;
- a run is labelled from `<run_dir>/result.json` (its "config": task, model, method,
  label_fraction, target, ...) or, without one, from a trial whose `trial_id` is one of the
  run directory's path components under `OUT/runs/`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.tables import PROPOSED  # noqa: E402
from data_io.overlays import PREDICTION_RGB, TRUTH_RGB  # noqa: E402
from protocol.grid import TRANSFER  # noqa: E402
from protocol.run_dir import OVERLAYS_DIR, RESULT_JSON, TRANSLATIONS_DIR  # noqa: E402

KINDS = (OVERLAYS_DIR, TRANSLATIONS_DIR)
# The page shows at most this many images of each kind; the rest stay in the run directories.
MAX_COPIED_PER_KIND = 48
MONTAGE_COLUMNS = 4
MONTAGE_ROWS = 2
PANEL_INCHES = 3.3
TITLE_INCHES = 0.45


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(value):02x}" for value in rgb)


# The colours data_io/overlays.py draws with (prediction filled red, truth outlined green).
PREDICTION_COLOUR = _hex(PREDICTION_RGB)
TRUTH_COLOUR = _hex(TRUTH_RGB)


@dataclass(frozen=True)
class SavedImage:
    path: Path
    kind: str  # "overlays" | "translations"
    run_dir: Path
    run: dict  # identity of the run: experiment, task, model, method, label_fraction, target (when known)

    @property
    def label(self) -> str:
        """Two short lines: what run made the image, then which image."""
        run = self.run
        what = [str(run[k]) for k in ("task", "model") if run.get(k)]
        which = [self.path.stem]
        if self.is_transfer:
            what.append(f"{run.get('method', '?')} → {run.get('target', '?')}")
            if run.get("label_fraction") is not None:
                which.insert(0, f"{float(run['label_fraction']):g} % labels")
            if run.get("repetition") is not None:
                which.insert(0, f"rep {run['repetition']}")
        elif run.get("fold") is not None:
            which.insert(0, f"fold {run['fold']}")
        return f"{' · '.join(what) or self.run_dir.name}\n{' · '.join(which)}"

    @property
    def is_transfer(self) -> bool:
        return self.run.get("experiment") == TRANSFER

    def fig9_rank(self) -> tuple:
        """Images like the paper's Fig. 9 first: proposed transfer with 0 % target labels."""
        run = self.run
        zero_labels = self.is_transfer and run.get("label_fraction") in (0, 0.0)
        return (not zero_labels, not self.is_transfer, run.get("method") != PROPOSED, str(self.path))


def find_saved_images(out_dir: Path, trials: pd.DataFrame) -> list[SavedImage]:
    runs_dir = Path(out_dir) / "runs"
    if not runs_dir.is_dir():
        return []
    trials_by_id = {row["trial_id"]: row for row in trials.to_dict("records")}
    found = []
    for kind in KINDS:
        for path in sorted(runs_dir.glob(f"**/{kind}/*.png")):
            run_dir = path.parent.parent
            found.append(SavedImage(path, kind, run_dir, _run_identity(run_dir, runs_dir, trials_by_id)))
    return found


def _run_identity(run_dir: Path, runs_dir: Path, trials_by_id: dict) -> dict:
    result_file = run_dir / RESULT_JSON
    if result_file.is_file():
        try:
            config = json.loads(result_file.read_text()).get("config", {})
            if isinstance(config, dict) and config:
                return config
        except (json.JSONDecodeError, AttributeError):
            pass  # an unreadable summary only costs the label; the image is still shown
    for component in run_dir.relative_to(runs_dir).parts[::-1]:
        if component in trials_by_id:
            return trials_by_id[component]
    return {}


def copy_into_report(images: list[SavedImage], report_dir: Path) -> list[tuple[SavedImage, str]]:
    """Copy up to MAX_COPIED_PER_KIND images of each kind; return them with page-relative paths."""
    copied = []
    for kind in KINDS:
        of_kind = in_fig9_order([i for i in images if i.kind == kind])[:MAX_COPIED_PER_KIND]
        target_dir = report_dir / kind
        if target_dir.exists():
            shutil.rmtree(target_dir)
        if of_kind:
            target_dir.mkdir(parents=True)
        for number, image in enumerate(of_kind):
            name = f"{number:03d}_{image.path.name}"
            shutil.copyfile(image.path, target_dir / name)
            copied.append((image, f"{kind}/{name}"))
    return copied


def in_fig9_order(images: list[SavedImage]) -> list[SavedImage]:
    """Best Fig. 9 candidates first, taking the tasks in turn so that every task gets shown."""
    ranked = sorted(images, key=SavedImage.fig9_rank)
    seen: dict[tuple, int] = {}
    turn = {}
    for image in ranked:
        group = (image.fig9_rank()[:3], image.run.get("task"))
        turn[image.path] = seen[group] = seen.get(group, -1) + 1
    return sorted(ranked, key=lambda image: (image.fig9_rank()[:3], turn[image.path]))


def figure9(images: list[SavedImage]) -> Figure | None:
    """A montage of the saved overlays, Fig. 9 candidates first; None when no run saved any."""
    overlays = in_fig9_order([i for i in images if i.kind == OVERLAYS_DIR])
    # Fig. 9 shows target images; JSRT overlays only stand in when no transfer run saved any.
    if any(i.is_transfer for i in overlays):
        overlays = [i for i in overlays if i.is_transfer]
    chosen = overlays[: MONTAGE_COLUMNS * MONTAGE_ROWS]
    if not chosen:
        return None
    columns = min(MONTAGE_COLUMNS, len(chosen))
    rows = -(-len(chosen) // columns)
    # Square panels of PANEL_INCHES with room for two title lines each; fixed margins in inches
    # leave space for the figure title above and the legend below, at any row count.
    height = rows * (PANEL_INCHES + TITLE_INCHES) + 1.0
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES * columns * 1.02, height), squeeze=False,
                             gridspec_kw={"hspace": TITLE_INCHES / PANEL_INCHES, "wspace": 0.02})
    fig.subplots_adjust(left=0.005, right=0.995, top=1 - (0.45 + TITLE_INCHES) / height, bottom=0.5 / height)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image in zip(axes.ravel(), chosen):
        ax.imshow(mpimg.imread(image.path), cmap="gray")
        ax.set_title(image.label, fontsize=8)
    like_paper = all(image.fig9_rank()[:3] == (False, False, False) for image in chosen)
    subject = ("target images, proposed transfer with 0 % target labels" if like_paper
               else "target images with predicted masks" if chosen[0].is_transfer
               else "JSRT test images with predicted masks (no transfer run saved overlays)")
    fig.suptitle(f"Fig. 9-style: {subject} ({len(chosen)} of {len(overlays)} saved)")
    fig.legend(handles=[Patch(color=PREDICTION_COLOUR, label="predicted mask (filled)"),
                        Patch(color=TRUTH_COLOUR, label="ground truth (outline, where labelled)")],
               loc="lower center", ncol=2, fontsize=8)
    return fig
