"""`cxrsweep tune`: Optuna search with ASHA early stopping over one grid cell, once per test fold
(Table I) or repetition (Table II), so that no configuration is chosen with a test image of a
run it configures (the protocol and the record: protocol.tuned).

Each search tunes the cell of one fold / repetition on that run's own splits: its trials train
on the training images and are scored on the validation images (the second-validation fold, or
the target validation split when the cell keeps target labels, else the source validation split
through A -> B -> A); they predict no test image. The record, best-config.json, holds one entry
per fold / repetition with the images it trained and scored on; `cxrsweep run --config`
applies each entry to its own fold / repetition only.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from errors import UserError
from protocol.config import RunConfig
from protocol.grid import Grid, TrialSpec, config_hash, spec_to_dict
from protocol.store import RunStore
from protocol.tuned import TunedEntry, TuningRecord, provenance, scope_of
from sweep import resources, retries
from sweep.driver_lock import DriverLock
from sweep.inputs import DataPaths, load_trial_datasets
from sweep.options import SweepOptions
from sweep.progress import ray_log_path
from sweep.runner import run_grid
from sweep.trainables import run_trial

SCORE = "val_jaccard"

# The paper's optimiser settings sit inside every range.
SUPERVISED_SPACE = {
    "lr": tune.loguniform(1e-5, 1e-2),
    "weight_decay": tune.loguniform(1e-6, 1e-2),
    "batch_size": tune.choice([2, 4, 8]),
}
# `proposed` adds the weight of its supervised step. For a transfer cell every searched field acts
# in the transfer phase only (lr, weight decay, batch size: M_A's fine-tuning and the transfer
# batches), and a record changes the cell, never its M_A or warm-up. The translator's loss
# weights (w_adv, w_cycle, w_recon, ...) are not searched: they shape the warm-up, which every
# task and label fraction shares and the transfer phase continues from, so tuning them would
# mean one warm-up per sample; and at 0 % labels the only score, source images through
# A -> B -> A, rewards a translator that changes nothing rather than one that renders the target
# well. They keep the literature's values (models/registry.py, protocol/config.py).
PROPOSED_SPACE = {
    "w_seg": tune.loguniform(0.1, 10.0),
}


def search_space(cfg: RunConfig) -> dict[str, Any]:
    """The fields a search of this cell samples: each one acts in the cell's training."""
    if cfg.method == "source_only":
        raise UserError("--method source_only trains nothing (M_A applied as it is): there is nothing to tune")
    space = dict(SUPERVISED_SPACE)
    if cfg.method == "proposed":
        space.update(PROPOSED_SPACE)
    return space


def _tune_trial(config: dict, datasets: dict) -> None:
    """One Optuna sample: the cell's spec with the sampled fields, run like any sweep trial but
    with its validation split in place of its test split (no test image is predicted)."""
    cell = dict(config["cell"])
    sampled = {name: config[name] for name in config["sampled"]}
    cfg = RunConfig.from_dict(cell["spec"]["config"]).replace(**sampled)
    cell["spec"] = {**cell["spec"], "config": cfg.to_dict(),
                    "trial_id": f"{cell['spec']['trial_id']}-tune-{config_hash(cfg)}"}
    run_trial({**config, "trial": cell, "tuning": True}, datasets)


def run_tuning(cells: list[list[TrialSpec]], paths: DataPaths, options: SweepOptions, n_trials: int,
               best_file: Path, say=print) -> TuningRecord:
    """Search each cell (`[cell, *dependencies]`, one per fold / repetition) after running the
    dependencies; write the record (one entry per cell) to `best_file` and return it. Refused
    while another driver runs on the same OUT (sweep.driver_lock)."""
    with DriverLock(options.out):
        return _run_tuning(cells, paths, options, n_trials, best_file, say)


def _run_tuning(cells: list[list[TrialSpec]], paths: DataPaths, options: SweepOptions, n_trials: int,
                best_file: Path, say) -> TuningRecord:
    everything = [spec for specs in cells for spec in specs]
    datasets = load_trial_datasets(everything, paths)
    fingerprints = {name: dataset.fingerprint for name, dataset in datasets.items()}
    grid = Grid()
    for spec in everything:
        grid.add(spec)
    grid = grid.with_data(fingerprints)
    dependencies = Grid({spec.trial_id: grid.trials[spec.trial_id] for specs in cells for spec in specs[1:]})
    if dependencies.trials:
        outcome = run_grid(dependencies, paths, options, say=say, datasets=datasets)
        if not outcome.ok:
            raise RuntimeError(f"dependencies of the tuned cells failed: {outcome.failed}")
    resources.connect(options)
    entries = [_search(grid.trials[specs[0].trial_id], [grid.trials[s.trial_id] for s in specs[1:]], datasets,
                       options, n_trials, say) for specs in cells]
    record = TuningRecord(str(best_file), entries)
    record.write(best_file)
    say(f"[tune] wrote {best_file} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}); apply it with: "
        f"cxrsweep run ... --config {best_file} (each fold / repetition takes its own entry)")
    return record


def asha_max_t(cell: TrialSpec) -> int:
    """ASHA's horizon for `cell`: one past the last epoch its engine trains (TrialSpec's
    training_epochs: `transfer_epochs` for proposed, `self_training_epochs` for self-training, `epochs` otherwise). ASHA
    stops a trial that reaches max_t, and a trial must live through its last epoch to evaluate its
    best epoch and publish."""
    return max(cell.training_epochs, 1) + 1


def _search(cell: TrialSpec, dependencies: list[TrialSpec], datasets: dict, options: SweepOptions, n_trials: int,
            say) -> TunedEntry:
    """One Optuna + ASHA search of `cell`; its best values with their provenance."""
    store = RunStore(options.out)
    space = search_space(cell.config)
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, datasets=datasets),
                                    resources.trial_resources(options, cell.config.profile, say))
    param_space = {
        # Tuning trials publish under OUT/tune (never into the result tables); M_A and the
        # warm-up are ordinary sweep trials under OUT.
        **space, "sampled": sorted(space), "out": store.uri("tune"), "dependencies_out": store.location,
        "cpus": options.cpus_per_trial,
        "cell": {"spec": spec_to_dict(cell), "dependencies": [spec_to_dict(d) for d in dependencies]},
    }
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=SCORE, mode="max", num_samples=n_trials,
            search_alg=OptunaSearch(seed=cell.config.seed),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=asha_max_t(cell), grace_period=1, reduction_factor=2),
            max_concurrent_trials=options.max_concurrent or None,
            # One worker process runs sample after sample (an ASHA-stopped one included), as in
            # the sweep: no interpreter, torch and Ray Tune start-up per sample.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=f"tune-{cell.trial_id}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=store.uri("ray"),
                                  failure_config=retries.failure_config(options.retries),
                                  # Each tuning trial's curves under OUT/ray/tune-<cell>-<time>/.
                                  callbacks=[TBXLoggerCallback(), *retries.callbacks(options.retries)], verbose=1),
    )
    say(f"[tune] Ray's own messages of the tuning trials (checkpoints): {ray_log_path(RunStore(store.uri('tune')))}"
        + ("" if store.is_local else " on each node"))
    results = tuner.fit()
    scored = [r for r in results if r.error is None and r.metrics and SCORE in r.metrics]
    if not scored:
        errors = "; ".join(str(r.error).strip().splitlines()[-1] for r in results if r.error is not None)
        raise RuntimeError(f"no tuning trial reported {SCORE}" + (f" (errors: {errors})" if errors else ""))
    best = results.get_best_result(metric=SCORE, mode="max", scope="all")
    chosen = {name: best.config[name] for name in space}
    entry = TunedEntry(
        scope=scope_of(cell), values=chosen, cell=cell.trial_id, trials=len(results), errors=len(results.errors),
        score={"metric": SCORE, "value": float(best.metrics_dataframe[SCORE].max()),
               "split": "validation (second-validation fold / target validation split / source validation "
                        "split through A -> B -> A), never test"},
        **provenance(cell, datasets))
    split_name, split_value = entry.split
    say(f"[tune] {cell.trial_id} ({split_name} {split_value}): best {SCORE} {entry.score['value']:.4f} over "
        f"{len(results)} trials: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(chosen.items())))
    return entry
