"""Ray Tune trainables: thin adapters from a trial spec to a call of a Ray-free engine.

A trial trains in a local run directory named after its trial id. After every epoch the
engine's callback reports the metrics to Tune; when the engine has just written
`checkpoints/last.pt` (at most every `checkpoint_every_s` seconds, and after the last epoch:
engine.runtime.checkpoints.CheckpointClock), that folder, holding only what a resume needs, goes
with the report as the Tune checkpoint. A retried or resumed trial restores it into a clean run
directory and the engine continues from it. When the engine returns, the run directory is
published to OUT (see protocol.store), which is what the result tables and later trials read; the
trial's checkpoint count, bytes and seconds go into its trial.json.

Trials never open dataset paths: the arrays arrive through the object store
(`tune.with_parameters`), and dependencies (M_A, warmed translators) are read from OUT.

Failpoints (sweep.failpoints, armed by tests only): the driver puts the armed ones into the entries
of the trials they match (`inject_failure`, `hold_at_epoch`), and `run_trial` adds their callbacks.
"""
from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune

from engine.data.transfer import hide_test
from protocol.config import RunConfig
from protocol.grid import QUALITATIVE, SEGMENTATION, TRANSFER, TRANSLATOR_WARMUP, TrialSpec, spec_from_dict
from protocol.run_dir import NO_ADAPTATION, RESULT_JSON, TRANSLATOR_GLOB, best_checkpoint_path, last_checkpoint_path
from protocol.store import RunStore
from sweep import failpoints
from sweep.progress import ENGINE_LOGGERS, RAY_LOGGERS, ray_log_path, send_ray_messages_to

log = logging.getLogger(__name__)

# Local scratch on each worker: run directories (outside Tune's trial folder, which Tune syncs
# on its own schedule) and dependency folders copied from a bucket.
SCRATCH = Path(tempfile.gettempdir()) / "cxrsweep"
DEPENDENCY_CACHE = SCRATCH / "dependencies"
# Beside last.pt in a Tune checkpoint: the trial's checkpoint count, bytes and seconds so far.
CHECKPOINT_STATS = "checkpoint-stats.json"


def checkpoint_folder(run_dir: Path) -> Path:
    """The engine's checkpoints/ folder: what a Tune checkpoint of the trial holds."""
    return last_checkpoint_path(run_dir).parent


def _restore_run_dir(run_dir: Path) -> bool:
    """Make `run_dir` hold exactly the trial's last reported checkpoint (or nothing)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as saved:
        shutil.copytree(saved, checkpoint_folder(run_dir), dirs_exist_ok=True)
    return True


@dataclass
class CheckpointStats:
    """How many Tune checkpoints a trial wrote, their bytes (last.pt) and seconds (the engine's
    write plus the `tune.report` call that persists it to storage), over all its attempts."""

    count: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @classmethod
    def restored(cls, run_dir: Path) -> "CheckpointStats":
        path = checkpoint_folder(run_dir) / CHECKPOINT_STATS
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def note(self, metrics: dict, run_dir: Path) -> bool:
        """Count the checkpoint the engine has just written, if this epoch's `metrics` say it
        wrote one, and keep the counts beside it (they travel with the Tune checkpoint)."""
        from engine.runtime.checkpoints import CHECKPOINT_BYTES, CHECKPOINT_SECONDS

        if CHECKPOINT_BYTES not in metrics:
            return False
        self.count += 1
        self.bytes += int(metrics[CHECKPOINT_BYTES])
        self.seconds += float(metrics[CHECKPOINT_SECONDS])
        (checkpoint_folder(run_dir) / CHECKPOINT_STATS).write_text(json.dumps(self.as_dict()))
        return True


class _EpochReporter:
    """The engine's EpochCallback turned into `tune.report`; an epoch whose last.pt the engine
    has just written reports the checkpoints/ folder as the Tune checkpoint."""

    def __init__(self, stats: CheckpointStats):
        self.stats = stats

    def __call__(self, epoch: int, metrics: dict, run_dir: Path) -> None:
        reported = numeric(metrics)
        checkpoint = None
        if self.stats.note(metrics, run_dir):
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_folder(run_dir)))
        started = time.perf_counter()
        tune.report(reported, checkpoint=checkpoint)
        if checkpoint is not None:
            self.stats.seconds += time.perf_counter() - started


def trial_device(requested: str) -> str:
    """A trial given a GPU uses it; a trial given a logical GPU on a CPU machine runs on the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def numeric(metrics: dict) -> dict[str, float]:
    """The numbers of an epoch's metrics: what goes to Tune."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def trial_config(spec, config: dict, datasets: dict[str, Any]):
    """`spec`'s RunConfig as this worker runs it (its device, its CPU share as threads), after
    checking that the datasets shipped are the ones the trial was planned for: e.g. a Tune
    experiment restored with other data never trains a trial on data it does not name."""
    shipped = {name: datasets[name].fingerprint for name, _ in spec.data}
    if shipped != dict(spec.data):
        raise ValueError(f"{spec.trial_id}: the trial was planned for data {dict(spec.data)} but was given {shipped}")
    cfg = spec.config
    return cfg.replace(device=trial_device(cfg.device),
                       num_threads=cfg.num_threads or max(1, int(config.get("cpus", 1))))


def trial_record(trial_id: str, device: str, engine_s: float, started_at: float, stats: CheckpointStats,
                 **extra) -> dict[str, Any]:
    """What a published trial's trial.json says of where and how it ran."""
    return {"trial_id": trial_id, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "device": device, "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "engine_s": engine_s,
            "started_at": started_at, "finished_at": time.time(), "checkpoints": stats.as_dict(), **extra}


def error_summary(error: BaseException) -> str:
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run_trial(config: dict, datasets: dict[str, Any]) -> None:
    """One Table I / II trial, translator warm-up or qualitative (Fig. 9) transfer run.

    `config["trial"]` holds `spec` (a serialised TrialSpec), `dependencies` (the specs it
    needs) and the optional failpoints `inject_failure` and `hold_at_epoch` (sweep.failpoints);
    `config` also holds `out` (where the trial publishes), optionally `dependencies_out` (where its
    dependencies lie, default `out`), `cpus` (the trial's CPU share) and `tuning` (a tuning trial:
    its validation split stands in for its test split, engine.data.transfer.hide_test)."""
    started_at = time.time()
    trial = config["trial"]
    spec = spec_from_dict(trial["spec"])
    store = RunStore(config["out"])
    send_ray_messages_to(ray_log_path(store), RAY_LOGGERS + ENGINE_LOGGERS)
    if store.is_complete(spec):
        # Published before a driver was killed, but not yet recorded as complete by Tune.
        print(f"[trial {spec.trial_id}] already published in OUT; nothing to do", flush=True)
        tune.report({"published": 1})
        return
    cfg = trial_config(spec, config, datasets)
    node_id = ray.get_runtime_context().get_node_id()
    run_dir = SCRATCH / "runs" / tune.get_context().get_experiment_name() / spec.trial_id
    resumed = _restore_run_dir(run_dir)
    log.info("[trial %s] %s on node %s (%s), device %s, %d thread(s)", spec.trial_id,
             "resuming from its checkpoint" if resumed else "starting", node_id[:12], socket.gethostname(),
             cfg.device, cfg.num_threads)

    checkpoints = CheckpointStats.restored(run_dir)
    callbacks: list = [_EpochReporter(checkpoints)]
    callbacks += failpoints.trial_callbacks(trial, store, spec.trial_id, resumed)

    train = _TRAIN_BY_KIND.get(spec.kind)
    if train is None:
        raise ValueError(f"{spec.trial_id}: unknown trial kind {spec.kind!r}")
    engine_started = time.perf_counter()
    final = train(_TrialRun(spec, cfg, config, datasets, store, run_dir, callbacks))
    if final is None:
        return  # not applicable: recorded in OUT and reported, nothing to publish
    engine_s = time.perf_counter() - engine_started  # the engine call, per-epoch reports and checkpoints included
    store.publish(spec, run_dir, trial_record(spec.trial_id, cfg.device, engine_s, started_at, checkpoints))
    shutil.rmtree(run_dir, ignore_errors=True)  # published; the worker's scratch copy is not needed any more
    tune.report({**final, "published": 1})


@dataclass
class _TrialRun:
    """What `run_trial` hands the training function of a trial's kind."""

    spec: TrialSpec
    cfg: RunConfig  # as this worker runs it (trial_config)
    config: dict  # the trainable's config (see run_trial)
    datasets: dict[str, Any]
    store: RunStore
    run_dir: Path
    callbacks: list

    def view(self, data):
        """The data as the trial sees it: a tuning trial's validation split stands in for its test split."""
        return hide_test(data) if self.config.get("tuning") else data


def _train_segmentation(run: _TrialRun) -> dict[str, Any]:
    """A Table I trial (or a transfer trial's M_A): supervised training on JSRT."""
    from engine.data.segmentation import segmentation_data
    from engine.supervised import train_supervised

    data = run.view(segmentation_data(run.cfg, run.datasets["jsrt"]))
    return _final_metrics(train_supervised(run.cfg, data, run.run_dir, run.callbacks))


def _train_translator_warmup(run: _TrialRun) -> dict[str, Any]:
    """A translator warm-up: its epochs reported (and checkpointed) as a training run's, so a lost
    worker resumes it; nothing for the final report but `published`."""
    from engine.transfer.proposed.warmup import warmup_translator

    warmup_translator(run.cfg, run.datasets["jsrt"], run.datasets[run.cfg.target], run.run_dir,
                      callbacks=run.callbacks, run_dir=run.run_dir)
    return {}


def _train_transfer(run: _TrialRun) -> dict[str, Any] | None:
    """A Table II transfer trial or a qualitative (Fig. 9) run, from its published dependencies.
    None: the engine found the trial not applicable, which is recorded in OUT and reported."""
    from engine.transfer.dispatch import NotApplicable, train_transfer

    spec = run.spec
    try:
        data, segmenter, translator = transfer_inputs(run.cfg, run.datasets, run.config, run.config["trial"],
                                                      run.view)
        result = train_transfer(run.cfg, data, run.run_dir, segmenter_checkpoint=segmenter,
                                translator_checkpoint=translator, callbacks=run.callbacks)
    except NotApplicable as reason:
        if spec.kind == QUALITATIVE:
            raise  # a Fig. 9 run the engine refuses is a failure, never a quiet gap
        # The engine knows cells the grid cannot see (e.g. a target without these labels).
        run.store.record_not_applicable(spec, str(reason))
        tune.report({"not_applicable": 1})
        return None
    return {**_final_metrics(result), **trial_notes(run.run_dir)}


# A trial kind -> the function that trains it in its run directory and returns its final report
# (None: not applicable, nothing to publish).
_TRAIN_BY_KIND = {SEGMENTATION: _train_segmentation, TRANSLATOR_WARMUP: _train_translator_warmup,
                  TRANSFER: _train_transfer, QUALITATIVE: _train_transfer}


def trial_notes(run_dir: Path) -> dict[str, int]:
    """What the console's line for a finished transfer trial must say (sweep.progress.TRIAL_NOTES):
    a transfer run that kept no adaptation, discriminators that saturated. The engine's own
    warnings about them go to the log file with the rest of its lines."""
    summary = json.loads((run_dir / RESULT_JSON).read_text())
    return {"fell_back": int(summary.get("selected_model") == NO_ADAPTATION),
            "saturated": int(bool(summary.get("discriminators_saturated")))}


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
            segmenter = best_checkpoint_path(folder)
        elif dependency.kind == TRANSLATOR_WARMUP:
            found = sorted(folder.glob(TRANSLATOR_GLOB))
            if not found:
                raise FileNotFoundError(
                    f"{folder}: the translator warm-up {dependency.trial_id} left no {TRANSLATOR_GLOB}")
            translator = found[0]
    return segmenter, translator


def transfer_inputs(cfg, datasets: dict[str, Any], config: dict, entry: dict, view):
    """A transfer trial's data (as `view` shows it) and the files of its dependencies, M_A and the
    warmed translator, read from where they were published (`dependencies_out`, default `out`)."""
    from engine.data.transfer import transfer_data

    dependencies = [spec_from_dict(d) for d in entry.get("dependencies", [])]
    segmenter, translator = _dependency_files(RunStore(config.get("dependencies_out", config["out"])), dependencies)
    return view(transfer_data(cfg, datasets["jsrt"], datasets[cfg.target])), segmenter, translator
