"""The run store: the sweep's output folder OUT (a protocol.storage.Storage: a local disk or a
storage URI) and the marks on its trial folders, which say how each trial ended and whether a
finished one may be reused. The result tables are rebuilt from them by protocol.collect.

`trial.json` is written last, so a run folder without it is unfinished and is never reported
or reused. A trial that failed after its retries leaves `failed.json` (its error) instead, and
a cell the method cannot fill leaves `not_applicable.json` (why).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from protocol.grid import TRANSLATOR_WARMUP, TrialSpec, spec_to_dict
from protocol.run_dir import CHECKPOINTS_DIR, COMPLETE_MARKER, FAILED_MARKER, NOT_APPLICABLE_MARKER
from protocol.storage import Storage


class RunStore(Storage):
    """OUT with its trial folders: where each trial lies, whether it is finished (on which data),
    publishing a finished one, and recording a failure or a cell that cannot be filled."""

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


def same_data(spec: TrialSpec, recorded: dict) -> bool:
    """Whether a recorded trial (a serialised spec) ran on the data `spec` names."""
    return dict(spec.data) == (recorded.get("data") or {})

