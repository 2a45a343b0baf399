"""The sweep's output folder, on a local disk or at a storage URI (s3://, gs://), and the
result tables rebuilt from it. No Ray here.

Layout under OUT:

    runs/<trial_id>/         one finished Table I / II trial: the engine's run directory
                             (result.json, images.parquet, best.pt, overlays/) plus trial.json;
                             also the qualitative (Fig. 9) runs, kept for their overlays but
                             never a table row
    translators/<trial_id>/  one finished translator warm-up (a dependency, not a table row)
    results/trials.parquet   one row per trial  } rebuilt from runs/ at the end of a run,
    results/images.parquet   one row per image  } written atomically
    ray/                     Ray Tune's experiment folders (checkpoints, resume state)

`trial.json` is written last, so a run folder without it is unfinished and is never reported
or reused. A trial that failed after its retries leaves `failed.json` (its error) instead, and
a cell the method cannot fill leaves `not_applicable.json` (why).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from protocol.grid import TRANSLATOR_WARMUP, TrialSpec, spec_from_dict, spec_to_dict
from protocol.results import (
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
from protocol.run_dir import (
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    FAILED_MARKER,
    IMAGES_PARQUET,
    NOT_APPLICABLE_MARKER,
    RESULT_JSON,
    TABLED_FIELDS,
)

log = logging.getLogger(__name__)



def is_uri(location: str) -> bool:
    return "://" in str(location)


def _small_writes_in_one_put(location: str) -> str:
    """For s3:// the URI pyarrow opens, with writes that fit one part sent as a single PutObject
    (`allow_delayed_open`): result.json, trial.json and the sweep state appear whole or not at all,
    in one request rather than a three-request multipart upload, whose completion some
    S3-compatible servers answer badly. A query that already sets it is left as the user wrote it."""
    if not location.startswith("s3://") or "allow_delayed_open=" in location:
        return location
    return location + ("&" if "?" in location else "?") + "allow_delayed_open=true"


class RunStore:
    """OUT as a pyarrow filesystem plus a root path, so local folders and buckets work alike."""

    def __init__(self, out: str | Path):
        self.location = str(out)
        # A URI's query (e.g. ?endpoint_override=HOST:PORT&scheme=http for MinIO) says how to
        # reach the store: every URI derived from OUT keeps it, so Ray and the trials reach it too.
        self.query = ""
        if is_uri(self.location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(_small_writes_in_one_put(self.location))
            except Exception as exc:
                raise ValueError(f"--out {self.location}: not a storage URI pyarrow can open ({exc})") from None
            if "?" in self.location:
                self.query = "?" + self.location.split("?", 1)[1]
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
        return f"{self.location.split('://', 1)[0]}://{path}{self.query}"

    def download(self, local_root: Path, *parts: str, suffixes: tuple[str, ...] = ()) -> int:
        """Copy the files under OUT/<parts> (those ending in one of `suffixes`, or all) into
        local_root/<parts>, keeping the layout; returns how many were copied."""
        base = self.path(*parts)
        if not self.exists(base):
            return 0
        copied = 0
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type != pafs.FileType.File or (suffixes and not info.path.endswith(suffixes)):
                continue
            local = Path(local_root).joinpath(*parts, info.path[len(base):].lstrip("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(local), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            copied += 1
        return copied

    def upload(self, local_dir: Path, *parts: str) -> str:
        """Copy the folder local_dir to OUT/<parts> (replacing it); returns its URI."""
        self._put_tree(Path(local_dir), self.path(*parts))
        return self.uri(*parts)

    def _put_tree(self, local_dir: Path, dest: str, skip: tuple[str, ...] = ()) -> None:
        """Replace the folder dest with a copy of local_dir, leaving out files under a folder named
        in `skip`."""
        self.delete_dir(dest)
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file() and not set(skip) & set(p.parts)):
            target = f"{dest}/{file.relative_to(local_dir).as_posix()}"
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(file), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

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

    def _recorded_spec(self, spec: TrialSpec, marker: str) -> dict | None:
        path = f"{self.trial_dir(spec)}/{marker}"
        return self.read_json(path)["spec"] if self.exists(path) else None

    def is_complete(self, spec: TrialSpec) -> bool:
        """Whether OUT holds this trial finished on the same data (`spec.data`): a result of
        other data, or of unrecorded data, is never reused."""
        recorded = self._recorded_spec(spec, COMPLETE_MARKER)
        return recorded is not None and same_data(spec, recorded)

    def is_not_applicable(self, spec: TrialSpec) -> bool:
        recorded = self._recorded_spec(spec, NOT_APPLICABLE_MARKER)
        return recorded is not None and same_data(spec, recorded)

    def holds_other_data(self, spec: TrialSpec) -> bool:
        """Whether OUT holds this trial finished on data other than `spec.data`."""
        recorded = self._recorded_spec(spec, COMPLETE_MARKER)
        return recorded is not None and not same_data(spec, recorded)

    def publish(self, spec: TrialSpec, local_dir: Path, trial_info: dict) -> str:
        """Copy a finished run directory into OUT and mark it complete; returns where it lies."""
        dest = self.trial_dir(spec)
        info = {**trial_info, "spec": spec_to_dict(spec)}
        if self.is_local:
            # Build the folder beside its final place and swap it in with one rename.
            staging = Path(f"{dest}.partial-{uuid.uuid4().hex[:8]}")
            shutil.copytree(local_dir, staging, ignore=shutil.ignore_patterns(CHECKPOINTS_DIR))
            (staging / COMPLETE_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
            if Path(dest).exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        else:
            self._put_tree(Path(local_dir), dest, skip=(CHECKPOINTS_DIR,))
            self.write_json(f"{dest}/{COMPLETE_MARKER}", info)
        return dest

    def fetch_dir(self, spec: TrialSpec, local_root: Path) -> Path:
        """A finished trial's folder on this machine (copied from a bucket when OUT is remote).

        The copy is downloaded into a private folder and renamed into place in one step, so
        concurrent fetchers on one node (trials sharing a dependency) never see a partial file:
        the folder exists complete or not at all. Its name holds a hash of the trial's
        trial.json, so a republished dependency (other data) never reuses an older copy."""
        source = self.trial_dir(spec)
        if not self.is_complete(spec):
            state = "finished on other data" if self.holds_other_data(spec) else "not finished"
            raise FileNotFoundError(f"{self.display(source)}: dependency {spec.trial_id} has {state}")
        if self.is_local:
            return Path(source)
        stamp = hashlib.sha256(self.read_bytes(f"{source}/{COMPLETE_MARKER}")).hexdigest()[:16]
        local = Path(local_root) / spec.trial_id / stamp
        if local.is_dir():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stamp}.fetching-", dir=local.parent))
        try:
            pafs.copy_files(source, str(staging), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            try:
                os.rename(staging, local)  # atomic; fails when another fetcher renamed its copy first
            except OSError:
                if not local.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def record_failure(self, spec: TrialSpec, error: str) -> None:
        dest = self.trial_dir(spec)
        if self.is_complete(spec):
            return  # a finished result is never overwritten by a later failure
        self.write_json(f"{dest}/{FAILED_MARKER}", {"spec": spec_to_dict(spec), "error": error})

    def prepare_rerun(self, spec: TrialSpec) -> None:
        """Before a trial (re)runs: forget its recorded failure, and remove a result it left on
        other data, so that nothing of the old data is reported if the new run fails."""
        if self.holds_other_data(spec):
            self.delete_dir(self.trial_dir(spec))
            return
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


def same_data(spec: TrialSpec, recorded: dict) -> bool:
    """Whether a recorded trial (a serialised spec) ran on the data `spec` names."""
    return dict(spec.data) == (recorded.get("data") or {})


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


def collect_rows(store: RunStore, current: CurrentData | None = None) -> tuple[list[dict], list[dict], list[str]]:
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


def write_results(store: RunStore, current: CurrentData | None = None) -> tuple[int, int]:
    """Rebuild OUT/results/{trials,images}.parquet from the run folders; returns the row counts.
    With `current`, trials that ran on other data than the sweep now running are left out
    (and logged): one table never mixes two versions of a dataset."""
    trial_rows, image_rows, other_data = collect_rows(store, current)
    if other_data:
        log.warning("%d trial folder(s) in %s ran on other data than this sweep and are left out of the tables: %s",
                    len(other_data), store.uri("runs"), ", ".join(other_data[:5]) + (" ..." if len(other_data) > 5 else ""))
    store.write_table(to_table(trial_rows, TRIALS_SCHEMA), "results", "trials.parquet")
    store.write_table(to_table(image_rows, IMAGES_SCHEMA), "results", "images.parquet")
    return len(trial_rows), len(image_rows)
