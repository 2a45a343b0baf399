"""Ray Tune trainables: thin adapters from a trial spec to a call of a Ray-free engine.

A trial trains in a local run directory named after its trial id. After every epoch the
engine's callback reports the metrics to Tune together with the run directory as a checkpoint;
a retried or resumed trial restores that checkpoint into a clean run directory, and the engine
continues from `checkpoints/last.pt`. When the engine returns, the run directory is published
to OUT (see sweep.store), which is what the result tables and later trials read.

Trials never open dataset paths: the arrays arrive through the object store
(`tune.with_parameters`), and dependencies (M_A, warmed translators) are read from OUT.

Test hook: the runner copies `CXRSWEEP_INJECT_FAILURE` into matching trials (see
`sweep.runner.failure_injections`); such a trial raises at the given epoch, a given number of
times (counted in OUT/ray/injected-failures/, so retries on other nodes see the count).
"""
from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from sweep.grid import QUALITATIVE, SEGMENTATION, TRANSFER, TRANSLATOR_WARMUP, spec_from_dict
from sweep.store import RunStore
from sweep.tuned import hide_test

log = logging.getLogger(__name__)

# Local scratch on each worker: run directories (outside Tune's trial folder, which Tune syncs
# on its own schedule) and dependency folders copied from a bucket.
SCRATCH = Path(tempfile.gettempdir()) / "cxrsweep"
DEPENDENCY_CACHE = SCRATCH / "dependencies"


class InjectedFailure(RuntimeError):
    """Raised by the failure-injection test hook."""


def _restore_run_dir(run_dir: Path) -> bool:
    """Make `run_dir` hold exactly the trial's last reported checkpoint (or nothing)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as saved:
        shutil.copytree(saved, run_dir, dirs_exist_ok=True)
    return True


class _FailureHook:
    """The test hook: raise at `at_epoch`, at most `times` times (-1: always)."""

    def __init__(self, store: RunStore, trial_id: str, times: int, at_epoch: int):
        self.store, self.trial_id, self.times, self.at_epoch = store, trial_id, times, at_epoch
        self.folder = store.path("ray", "injected-failures")

    def maybe_fail(self, epoch: int) -> None:
        if epoch != self.at_epoch:
            return
        self.store.fs.create_dir(self.folder, recursive=True)
        done = [n for n in self.store.list_files(self.folder) if n.startswith(f"{self.trial_id}.")]
        if 0 <= self.times <= len(done):
            return
        self.store.write_json(f"{self.folder}/{self.trial_id}.{len(done) + 1}", {"epoch": epoch})
        raise InjectedFailure(
            f"injected failure {len(done) + 1} of {'always' if self.times < 0 else self.times} at epoch {epoch} "
            f"(test hook CXRSWEEP_INJECT_FAILURE)")

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        self.maybe_fail(epoch)


class _EpochReporter:
    """The engine's EpochCallback turned into `tune.report`, with the run directory as checkpoint."""

    def __init__(self, checkpoint_every: int):
        self.checkpoint_every = max(1, int(checkpoint_every))

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        reported = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        checkpoint = None
        if epoch % self.checkpoint_every == 0:
            checkpoint = tune.Checkpoint.from_directory(str(run_dir))
        tune.report(reported, checkpoint=checkpoint)


def _device(requested: str) -> str:
    """A trial given a GPU uses it; a trial given a logical GPU on a CPU machine runs on the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_trial(config: dict, datasets: dict[str, Any]) -> None:
    """One Table I / II trial, translator warm-up or qualitative (Fig. 9) transfer run.

    `config["trial"]` holds `spec` (a serialised TrialSpec), `dependencies` (the specs it
    needs) and the optional test hook `inject_failure`; `config` also holds `out` (where the
    trial publishes), optionally `dependencies_out` (where its dependencies lie, default
    `out`), `cpus` (the trial's CPU share), `checkpoint_every`, and `tuning` (a tuning trial:
    its validation split stands in for its test split, sweep.tuned.hide_test)."""
    from sweep.engine.supervised import train_supervised

    started_at = time.time()
    trial = config["trial"]
    spec = spec_from_dict(trial["spec"])
    store = RunStore(config["out"])
    cfg = spec.config
    cfg = cfg.replace(device=_device(cfg.device), num_threads=cfg.num_threads or max(1, int(config.get("cpus", 1))))
    shipped = {name: datasets[name].fingerprint for name, _ in spec.data}
    if shipped != dict(spec.data):
        # E.g. a Tune experiment restored with other data: never train a trial on data it does not name.
        raise ValueError(f"{spec.trial_id}: the trial was planned for data {dict(spec.data)} but was given {shipped}")
    node_id = ray.get_runtime_context().get_node_id()
    run_dir = SCRATCH / "runs" / tune.get_context().get_experiment_name() / spec.trial_id
    resumed = _restore_run_dir(run_dir)
    print(f"[trial {spec.trial_id}] {'resuming from its checkpoint' if resumed else 'starting'} "
          f"on node {node_id[:12]} ({socket.gethostname()}), device {cfg.device}, {cfg.num_threads} thread(s)",
          flush=True)

    callbacks: list = [_EpochReporter(config.get("checkpoint_every", 1))]
    injection = trial.get("inject_failure")
    if injection:
        hook = _FailureHook(store, spec.trial_id, int(injection["times"]), int(injection["at_epoch"]))
        # A resumed attempt starts past the failing epoch: it fails at once if it still must.
        hook.maybe_fail(hook.at_epoch if resumed else 0)
        callbacks.append(hook)

    view = hide_test if config.get("tuning") else (lambda data: data)
    final: dict[str, Any] = {}
    engine_started = time.perf_counter()
    if spec.kind == SEGMENTATION:
        from sweep.engine.data import segmentation_data

        result = train_supervised(cfg, view(segmentation_data(cfg, datasets["jsrt"])), run_dir, callbacks)
        final = _final_metrics(result)
    elif spec.kind == TRANSLATOR_WARMUP:
        from sweep.engine.translation import warmup_translator

        warmup_translator(cfg, datasets["jsrt"], datasets[cfg.target], run_dir)
    elif spec.kind in (TRANSFER, QUALITATIVE):
        from sweep.engine.transfer import NotApplicable

        dependencies = [spec_from_dict(d) for d in trial.get("dependencies", [])]
        dependency_store = RunStore(config.get("dependencies_out", config["out"]))
        try:
            result = _run_transfer(cfg, datasets, dependency_store, dependencies, run_dir, callbacks, view)
        except NotApplicable as reason:
            if spec.kind == QUALITATIVE:
                raise  # a Fig. 9 run the engine refuses is a failure, never a quiet gap
            # The engine knows cells the grid cannot see (e.g. a target without these labels).
            store.record_not_applicable(spec, str(reason))
            tune.report({"not_applicable": 1})
            return
        final = _final_metrics(result)
    else:
        raise ValueError(f"{spec.trial_id}: unknown trial kind {spec.kind!r}")

    engine_s = time.perf_counter() - engine_started  # the engine call, per-epoch reports and checkpoints included
    finished_at = time.time()
    store.publish(spec, run_dir, {
        "trial_id": spec.trial_id, "node_id": node_id, "host": socket.gethostname(), "device": cfg.device,
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "engine_s": engine_s, "started_at": started_at,
        "finished_at": finished_at})
    shutil.rmtree(run_dir, ignore_errors=True)  # published; the worker's scratch copy is not needed any more
    tune.report({**final, "published": 1})


def _final_metrics(result) -> dict[str, Any]:
    """The last report of a trial: its best validation score (what searches rank on), its
    test mean (for the progress lines only) and its last epoch (ASHA's time axis)."""
    last_epoch = result.history[-1].get("epoch", 0) if result.history else 0
    return {"val_jaccard": result.val_jaccard, "test_jaccard_mean": result.test_jaccard_mean, "epoch": last_epoch}


def _dependency_files(store: RunStore, dependencies: list) -> tuple[Path | None, Path | None]:
    """The M_A checkpoint and the warmed translator a transfer trial depends on."""
    segmenter = translator = None
    for dependency in dependencies:
        folder = store.fetch_dir(dependency, DEPENDENCY_CACHE)
        if dependency.kind == SEGMENTATION:
            segmenter = folder / "best.pt"
        elif dependency.kind == TRANSLATOR_WARMUP:
            found = sorted(folder.glob("translator-*.pt"))
            if not found:
                raise FileNotFoundError(f"{folder}: the translator warm-up {dependency.trial_id} left no translator-*.pt")
            translator = found[0]
    return segmenter, translator


def _run_transfer(cfg, datasets, store: RunStore, dependencies: list, run_dir: Path, callbacks, view):
    from sweep.engine.transfer import train_transfer
    from sweep.engine.transfer_data import transfer_data

    segmenter, translator = _dependency_files(store, dependencies)
    data = view(transfer_data(cfg, datasets["jsrt"], datasets[cfg.target]))
    return train_transfer(cfg, data, run_dir, segmenter_checkpoint=segmenter, translator_checkpoint=translator,
                          callbacks=callbacks)
