"""The output folder of `cxrsweep segment` (driver side), and what makes a job resumable.

`SegmentOutput` writes each batch's PNGs into OUT/masks/ and OUT/overlays/ (atomically), then
its rows into OUT/.parts/ as they come, and gathers them into OUT/segmentations.parquet (schema
in protocol.results) at the end. A file whose path, size and modification time already have a
row is not segmented again (`SegmentOutput.pending`); OUT/segment.json names the checkpoint the
folder's segmentations were made with, and another checkpoint is refused.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from errors import UserError
from protocol.results import (
    SEGMENTATIONS_SCHEMA,
    SEGMENTATIONS_SCHEMA_VERSION,
    replace_atomically,
    to_table,
    write_atomic,
)

if TYPE_CHECKING:
    from inference.inputs import ImageItem
    from inference.stages import CheckpointInfo

log = logging.getLogger(__name__)

PARQUET_NAME = "segmentations.parquet"
MANIFEST_NAME = "segment.json"
PARTS_DIR = ".parts"
PART_ROWS = 256  # rows per part file: a killed run loses at most this many rows (their masks are rewritten)


class SegmentOutput:
    """OUT of one `cxrsweep segment` job: masks/, overlays/, .parts/, segmentations.parquet and
    segment.json (the checkpoint it was made with: another checkpoint is refused)."""

    def __init__(self, out: str | Path, info: CheckpointInfo, checkpoint_path: str | Path):
        self.out, self.info = Path(out), info
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = self.out / MANIFEST_NAME
        if manifest.exists():
            try:
                recorded = json.loads(manifest.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{manifest}: not valid JSON ({exc})") from None
            if recorded.get("sha256") != info.sha256:
                raise UserError(f"{self.out}: holds segmentations by another checkpoint "
                                f"({recorded.get('checkpoint')}, sha256 {str(recorded.get('sha256'))[:12]}...); "
                                "use another --out")
        else:
            payload = {**info.to_dict(), "checkpoint": str(Path(checkpoint_path).resolve())}
            replace_atomically(manifest, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
        self.buffer: list[dict] = []

    @property
    def parquet(self) -> Path:
        return self.out / PARQUET_NAME

    def existing(self):
        """Every row recorded so far (the gathered table and the parts), the latest per path. Rows
        of another schema version are left out: their images are segmented again."""
        import pandas as pd
        import pyarrow.parquet as pq

        frames = []
        for path in [self.parquet, *sorted((self.out / PARTS_DIR).glob("part-*.parquet"))]:
            if path.exists():
                try:
                    frames.append(pq.read_table(path).to_pandas())
                except Exception as exc:  # pyarrow raises several types for damaged files
                    raise UserError(f"{path}: not a readable Parquet file ({exc}); "
                                    "delete it to redo its images") from None
        if not frames:
            return pd.DataFrame(columns=SEGMENTATIONS_SCHEMA.names)
        rows = pd.concat(frames, ignore_index=True)
        current = rows["schema_version"] == SEGMENTATIONS_SCHEMA_VERSION
        if not current.all():
            log.warning("%s: %d row(s) of another schema version; their images are segmented again", self.out,
                        int((~current).sum()))
            rows = rows[current]
        return rows.sort_values("segmented_at", kind="stable").drop_duplicates("path", keep="last")

    def pending(self, items: Sequence[ImageItem], retry_unreadable: bool = False) -> list[ImageItem]:
        """The items without a row for their current size and modification time."""
        rows = self.existing()
        if retry_unreadable and len(rows):
            rows = rows[rows.status == "ok"]
        done = {(p, int(b), int(m)) for p, b, m in zip(rows.path, rows.file_bytes, rows.file_mtime_ns)}
        return [i for i in items if (i.path, i.file_bytes, i.mtime_ns) not in done]

    def record(self, columns: dict[str, np.ndarray]) -> list[dict]:
        """Write a batch's PNGs, then buffer its rows (a row never exists without its mask)."""
        rows = []
        for index in range(len(columns["path"])):
            for folder, key in (("masks", "mask_png"), ("overlays", "overlay_png")):
                data = columns[key][index]
                if data:
                    target = self.out / folder / columns["mask_name"][index]
                    replace_atomically(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
            rows.append({name: _plain(columns[name][index]) for name in SEGMENTATIONS_SCHEMA.names})
        self.buffer += rows
        if len(self.buffer) >= PART_ROWS:
            self.flush()
        return rows

    def flush(self) -> None:
        if self.buffer:
            part = self.out / PARTS_DIR / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
            write_atomic(to_table(self.buffer, SEGMENTATIONS_SCHEMA), part)
            self.buffer = []

    def gather(self):
        """Write OUT/segmentations.parquet from everything recorded, then drop the parts it holds."""
        self.flush()
        parts = sorted((self.out / PARTS_DIR).glob("part-*.parquet"))
        rows = self.existing().sort_values("path", kind="stable")
        records = rows.astype(object).where(rows.notna(), None).to_dict("records")
        write_atomic(to_table(records, SEGMENTATIONS_SCHEMA), self.parquet)
        for part in parts:
            part.unlink(missing_ok=True)
        return rows


def _plain(value):
    """numpy scalars -> Python values for pyarrow; a missing value (None, or the NaN a column that
    crossed Arrow carries for one) -> None, as gather() writes it."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and value != value else value
