"""The result tables rebuilt from the run folders: OUT/results/trials.parquet (one row per trial:
finished, failed or not applicable) and OUT/results/images.parquet (one row per test image of a
finished trial), written atomically at the end of every run (schema: protocol.results). Only the
trials of the data now running enter them (`CurrentData`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow.parquet as pq

from protocol.grid import TrialSpec, spec_from_dict
from protocol.results import (
    IMAGES_SCHEMA,
    KEY_COLUMNS,
    SCHEMA_VERSION,
    TRIALS_SCHEMA,
    config_values,
    key_values,
    to_table,
)
from protocol.run_dir import (
    COMPLETE_MARKER,
    FAILED_MARKER,
    IMAGES_PARQUET,
    NOT_APPLICABLE_MARKER,
    RESULT_JSON,
    TABLED_FIELDS,
)
from protocol.storage import Storage

log = logging.getLogger(__name__)


def _row_keys(spec: TrialSpec) -> dict:
    return {**key_values(spec.config, spec.trial_id), **config_values(spec.config)}


def _outcome_row(spec: TrialSpec, status: str, error: str | None = None) -> dict:
    return {**_row_keys(spec), "status": status, "error": error, "config_json": spec.config.to_json(),
            "schema_version": SCHEMA_VERSION}


@dataclass(frozen=True)
class CurrentData:
    """The data of the sweep now running: its image size and each loaded dataset's fingerprint."""

    image_size: int
    fingerprints: dict[str, str]

    def contradicts(self, spec: TrialSpec) -> bool:
        """A recorded trial at this image size that read another version of a loaded dataset (or
        did not record what it read): its numbers do not belong in today's tables."""
        if spec.config.image_size != self.image_size or spec.not_applicable is not None:
            return False
        recorded = dict(spec.data)
        return any(recorded.get(name) != self.fingerprints[name] for name in spec.datasets if name in self.fingerprints)


def collect_rows(store: Storage, current: CurrentData | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """Trial rows and image rows from every run folder under OUT/runs, finished or not
    (qualitative runs excepted: they are no table cell), and the ids of the trials left out
    because they ran on other data than `current`."""
    trial_rows: list[dict] = []
    image_rows: list[dict] = []
    other_data: list[str] = []
    for trial_id in store.list_dirs(store.path("runs")):
        folder = store.path("runs", trial_id)
        marker = next((m for m in (COMPLETE_MARKER, FAILED_MARKER, NOT_APPLICABLE_MARKER)
                       if store.exists(f"{folder}/{m}")), None)
        if marker is None:
            continue  # a run still in progress (or killed): not reported
        record = store.read_json(f"{folder}/{marker}")  # read once: its spec, and what the marker says
        spec = spec_from_dict(record["spec"])
        if current is not None and current.contradicts(spec):
            other_data.append(trial_id)
            continue
        if not spec.has_row:
            continue  # a qualitative run (failed or not) is named by the command, not tabled
        if marker == COMPLETE_MARKER:
            summary = store.read_json(f"{folder}/{RESULT_JSON}")
            row = _outcome_row(spec, "ok")
            row.update({name: summary.get(name) for name in TABLED_FIELDS})
            checkpoints = record.get("checkpoints") or {}
            row.update(node_id=record.get("node_id"), started_at=record.get("started_at"),
                       finished_at=record.get("finished_at"), checkpoint_count=checkpoints.get("count"),
                       checkpoint_bytes=checkpoints.get("bytes"), checkpoint_s=checkpoints.get("seconds"))
            trial_rows.append(row)
            keys = key_values(spec.config, spec.trial_id)
            with store.fs.open_input_file(f"{folder}/{IMAGES_PARQUET}") as handle:
                images = pq.read_table(handle, columns=["image_id", "jaccard", "dice"]).to_pylist()
            image_rows.extend({**keys, **image} for image in images)
        elif marker == FAILED_MARKER:
            trial_rows.append(_outcome_row(spec, "failed", record["error"]))
        else:
            trial_rows.append(_outcome_row(spec, "not_applicable", record["reason"]))
    order = [name for name in KEY_COLUMNS if name != "trial_id"] + ["trial_id"]

    def sort_key(row: dict) -> tuple:
        return tuple((row.get(name) is None, row.get(name) if row.get(name) is not None else 0) for name in order)

    trial_rows.sort(key=sort_key)
    image_rows.sort(key=lambda r: (r["trial_id"], r["image_id"]))
    return trial_rows, image_rows, other_data


def write_results(store: Storage, current: CurrentData | None = None) -> tuple[int, int]:
    """Rebuild OUT/results/{trials,images}.parquet from the run folders; returns the row counts.
    With `current`, trials that ran on other data than the sweep now running are left out
    (and logged): one table never mixes two versions of a dataset."""
    trial_rows, image_rows, other_data = collect_rows(store, current)
    if other_data:
        log.warning("%d trial folder(s) in %s ran on other data than this sweep and are left out of the tables: %s",
                    len(other_data), store.uri("runs"),
                    ", ".join(other_data[:5]) + (" ..." if len(other_data) > 5 else ""))
    store.write_table(to_table(trial_rows, TRIALS_SCHEMA), "results", "trials.parquet")
    store.write_table(to_table(image_rows, IMAGES_SCHEMA), "results", "images.parquet")
    return len(trial_rows), len(image_rows)
