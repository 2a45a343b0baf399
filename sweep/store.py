"""The sweep's output folder, on a local disk or at a storage URI (s3://, gs://), and the
result tables rebuilt from it. No Ray here.

Layout under OUT:

    runs/<trial_id>/         one finished Table I / II trial: the engine's run directory
                             (result.json, images.parquet, best.pt, overlays/) plus trial.json;
                             also the qualitative (Fig. 9) runs, kept for their overlays but
                             never a table row
    translators/<trial_id>/  one finished translator warm-up (a dependency, not a table row)
    results/trials.parquet   one row per trial  } rebuilt from runs/ after every stage,
    results/images.parquet   one row per image  } written atomically
    ray/                     Ray Tune's experiment folders (checkpoints, resume state)

`trial.json` is written last, so a run folder without it is unfinished and is never reported
or reused. A trial that failed after its retries leaves `failed.json` (its error) instead, and
a cell the method cannot fill leaves `not_applicable.json` (why).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweep.grid import TRANSLATOR_WARMUP, TrialSpec, spec_from_dict, spec_to_dict
from sweep.results import (
    IMAGES_SCHEMA,
    KEY_COLUMNS,
    SCHEMA_VERSION,
    TRIALS_SCHEMA,
    config_values,
    key_values,
    replace_atomically,
    to_table,
    write_atomic,
)

log = logging.getLogger(__name__)

COMPLETE_MARKER = "trial.json"
FAILED_MARKER = "failed.json"
NOT_APPLICABLE_MARKER = "not_applicable.json"
ENGINE_SUMMARY = "result.json"
ENGINE_IMAGES = "images.parquet"
RESULT_FIELDS = ("best_epoch", "val_jaccard", "test_jaccard_mean", "test_jaccard_std", "test_dice_mean",
                 "test_dice_std", "n_test_images", "duration_s", "device", "selection_criterion", "selected_model",
                 "selection_score", "no_adaptation_score", "discriminators_saturated")


def is_uri(location: str) -> bool:
    return "://" in str(location)


class RunStore:
    """OUT as a pyarrow filesystem plus a root path, so local folders and buckets work alike."""

    def __init__(self, out: str | Path):
        self.location = str(out)
        if is_uri(self.location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(self.location)
            except Exception as exc:
                raise ValueError(f"--out {self.location}: not a storage URI pyarrow can open ({exc})") from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.location).expanduser().resolve())
            # Trials run in Tune's trial folders and rebuild the store from `location`: a
            # relative path would land there, so the driver passes the absolute one.
            self.location = self.root
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A location under OUT that Ray and people can use: a local path, or a URI with its scheme."""
        return self.display(self.path(*parts))

    def display(self, path: str) -> str:
        if self.is_local:
            return path
        return f"{self.location.split('://', 1)[0]}://{path}"

    # --- small file operations ---
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def read_json(self, path: str) -> dict:
        try:
            return json.loads(self.read_bytes(path))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None

    def write_json(self, path: str, value: Any) -> None:
        """Readers see the old file or the new one (rename locally, one PUT in a bucket)."""
        data = (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
        if self.is_local:
            replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
        else:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)

    def list_dirs(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))

    def list_files(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    # --- trial folders ---
    def trial_dir(self, spec: TrialSpec) -> str:
        return self.path("translators" if spec.kind == TRANSLATOR_WARMUP else "runs", spec.trial_id)

    def is_complete(self, spec: TrialSpec) -> bool:
        return self.exists(f"{self.trial_dir(spec)}/{COMPLETE_MARKER}")

    def is_not_applicable(self, spec: TrialSpec) -> bool:
        return self.exists(f"{self.trial_dir(spec)}/{NOT_APPLICABLE_MARKER}")

    def publish(self, spec: TrialSpec, local_dir: Path, trial_info: dict) -> str:
        """Copy a finished run directory into OUT and mark it complete; returns where it lies."""
        dest = self.trial_dir(spec)
        info = {**trial_info, "spec": spec_to_dict(spec)}
        if self.is_local:
            # Build the folder beside its final place and swap it in with one rename.
            staging = Path(f"{dest}.partial-{uuid.uuid4().hex[:8]}")
            shutil.copytree(local_dir, staging, ignore=shutil.ignore_patterns("checkpoints"))
            (staging / COMPLETE_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
            if Path(dest).exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        else:
            self.delete_dir(dest)
            for file in sorted(p for p in Path(local_dir).rglob("*") if p.is_file() and "checkpoints" not in p.parts):
                relative = file.relative_to(local_dir).as_posix()
                self.fs.create_dir(f"{dest}/{relative}".rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(file), f"{dest}/{relative}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)
            self.write_json(f"{dest}/{COMPLETE_MARKER}", info)
        return dest

    def fetch_dir(self, spec: TrialSpec, local_root: Path) -> Path:
        """A finished trial's folder on this machine (copied from a bucket when OUT is remote)."""
        source = self.trial_dir(spec)
        if not self.exists(f"{source}/{COMPLETE_MARKER}"):
            raise FileNotFoundError(f"{self.display(source)}: dependency {spec.trial_id} has not finished")
        if self.is_local:
            return Path(source)
        local = Path(local_root) / spec.trial_id
        if not (local / COMPLETE_MARKER).exists():
            pafs.copy_files(source, str(local), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return local

    def record_failure(self, spec: TrialSpec, error: str) -> None:
        dest = self.trial_dir(spec)
        if self.is_complete(spec):
            return  # a finished result is never overwritten by a later failure
        self.write_json(f"{dest}/{FAILED_MARKER}", {"spec": spec_to_dict(spec), "error": error})

    def clear_failure(self, spec: TrialSpec) -> None:
        path = f"{self.trial_dir(spec)}/{FAILED_MARKER}"
        if self.exists(path):
            self.fs.delete_file(path)

    def record_not_applicable(self, spec: TrialSpec, reason: str | None = None) -> None:
        dest = self.trial_dir(spec)
        self.write_json(f"{dest}/{NOT_APPLICABLE_MARKER}",
                        {"spec": spec_to_dict(spec), "reason": reason or spec.not_applicable})

    def failure_of(self, spec: TrialSpec) -> str | None:
        path = f"{self.trial_dir(spec)}/{FAILED_MARKER}"
        return self.read_json(path)["error"] if self.exists(path) else None

    # --- result tables ---
    def write_table(self, table, *parts: str) -> str:
        if self.is_local:
            return str(write_atomic(table, self.path(*parts)))
        with tempfile.TemporaryDirectory() as tmp:
            local = write_atomic(table, Path(tmp) / parts[-1])
            dest = self.path(*parts)
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        return self.uri(*parts)


def _row_keys(spec: TrialSpec) -> dict:
    return {**key_values(spec.config, spec.trial_id), **config_values(spec.config)}


def _outcome_row(spec: TrialSpec, status: str, error: str | None = None) -> dict:
    return {**_row_keys(spec), "status": status, "error": error, "config_json": spec.config.to_json(),
            "schema_version": SCHEMA_VERSION}


def collect_rows(store: RunStore) -> tuple[list[dict], list[dict]]:
    """Trial rows and image rows from every run folder under OUT/runs, finished or not
    (qualitative runs excepted: they are no table cell)."""
    trial_rows: list[dict] = []
    image_rows: list[dict] = []
    for trial_id in store.list_dirs(store.path("runs")):
        folder = store.path("runs", trial_id)
        if store.exists(f"{folder}/{COMPLETE_MARKER}"):
            info = store.read_json(f"{folder}/{COMPLETE_MARKER}")
            spec = spec_from_dict(info["spec"])
            if not spec.has_row:
                continue
            summary = store.read_json(f"{folder}/{ENGINE_SUMMARY}")
            row = _outcome_row(spec, "ok")
            row.update({name: summary.get(name) for name in RESULT_FIELDS})
            row.update(node_id=info.get("node_id"), started_at=info.get("started_at"),
                       finished_at=info.get("finished_at"))
            trial_rows.append(row)
            keys = key_values(spec.config, spec.trial_id)
            with store.fs.open_input_file(f"{folder}/{ENGINE_IMAGES}") as handle:
                images = pq.read_table(handle, columns=["image_id", "jaccard", "dice"]).to_pylist()
            image_rows.extend({**keys, **image} for image in images)
        elif store.exists(f"{folder}/{FAILED_MARKER}"):
            record = store.read_json(f"{folder}/{FAILED_MARKER}")
            spec = spec_from_dict(record["spec"])
            if spec.has_row:  # a failed qualitative run is named by the command, not tabled
                trial_rows.append(_outcome_row(spec, "failed", record["error"]))
        elif store.exists(f"{folder}/{NOT_APPLICABLE_MARKER}"):
            record = store.read_json(f"{folder}/{NOT_APPLICABLE_MARKER}")
            spec = spec_from_dict(record["spec"])
            if spec.has_row:
                trial_rows.append(_outcome_row(spec, "not_applicable", record["reason"]))
        # Anything else is a run still in progress (or killed): not reported.
    order = [name for name in KEY_COLUMNS if name != "trial_id"] + ["trial_id"]

    def sort_key(row: dict) -> tuple:
        return tuple((row.get(name) is None, row.get(name) if row.get(name) is not None else 0) for name in order)

    trial_rows.sort(key=sort_key)
    image_rows.sort(key=lambda r: (r["trial_id"], r["image_id"]))
    return trial_rows, image_rows


def write_results(store: RunStore) -> tuple[int, int]:
    """Rebuild OUT/results/{trials,images}.parquet from the run folders; returns the row counts."""
    trial_rows, image_rows = collect_rows(store)
    store.write_table(to_table(trial_rows, TRIALS_SCHEMA), "results", "trials.parquet")
    store.write_table(to_table(image_rows, IMAGES_SCHEMA), "results", "images.parquet")
    return len(trial_rows), len(image_rows)


def specs_by_status(store: RunStore, specs: Iterable[TrialSpec]) -> dict[str, list[TrialSpec]]:
    """Split trials into finished ("complete") and still to run ("todo")."""
    out: dict[str, list[TrialSpec]] = {"complete": [], "todo": []}
    for spec in specs:
        out["complete" if store.is_complete(spec) else "todo"].append(spec)
    return out
