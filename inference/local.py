"""The plain single-process path of `cxrsweep segment` (`--local`, and small jobs): `segment_local`
runs the stages (`inference.stages.segment_batch`) batch after batch in this process; and the
console's view of a job on either path, `Progress` (a tqdm bar and a summary line)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from tqdm import tqdm

from inference.inputs import ImageItem, batches, item_columns
from inference.stages import BatchModel, segment_batch

if TYPE_CHECKING:
    from inference.output import SegmentOutput


class Progress:
    """A tqdm bar of the images done (done / total, rate, ETA, then the unreadable and flagged
    counts), redrawn at most every `every_s` seconds (tqdm's `mininterval`; `every_s <= 0`: no
    bar); `close()` prints one summary line (this job's counts, rate and time)."""

    def __init__(self, total: int, every_s: float = 10.0, stream=None):
        self.total, self.stream = total, stream or sys.stdout
        self.done = self.unreadable = self.flagged = 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, file=self.stream, mininterval=max(every_s, 0.0), unit="image", desc="segment",
                        dynamic_ncols=True, leave=False, disable=every_s <= 0 or not total)

    def update(self, rows: Iterable[dict]) -> None:
        """Count a batch's rows (`SegmentOutput.record`'s)."""
        count = 0
        for row in rows:
            count += 1
            self.unreadable += row["status"] == "unreadable"
            self.flagged += bool(row["qc_flag"]) and row["status"] == "ok"
        self.done += count
        if count:
            self.bar.set_postfix_str(f"{self.unreadable} unreadable, {self.flagged} flagged", refresh=False)
            self.bar.update(count)

    def close(self) -> None:
        """Take the bar off the console and print the summary line."""
        self.bar.close()
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        print(f"segment: {self.done}/{self.total} image(s), {self.unreadable} unreadable, {self.flagged} flagged, "
              f"{rate:.1f} images/s, {elapsed:.1f} s", file=self.stream, flush=True)


def segment_local(items: Sequence[ImageItem], output: SegmentOutput, checkpoint: str | Path, device: str = "auto",
                  batch_size: int = 16, overlays: str = "flagged", progress: Progress | None = None) -> None:
    """read -> prepare -> network -> encode -> write, batch after batch, in this process."""
    model = BatchModel(checkpoint, output.info.sha256, device=device)
    for chunk in batches(items, batch_size):
        rows = output.record(segment_batch(item_columns(chunk), output.info, model, overlays))
        if progress is not None:
            progress.update(rows)
