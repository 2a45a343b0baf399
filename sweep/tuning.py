"""`cxrsweep tune`: Optuna search with ASHA early stopping over one grid cell.

Trials are scored on the validation Jaccard only (the second-validation fold for Table I
cells, the target validation split for transfer), never on the test fold. The best
configuration is written as JSON that `cxrsweep run --config-from FILE` applies.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from sweep.config import RunConfig
from sweep.grid import TrialSpec, config_hash, segmentation_trial, spec_to_dict, transfer_trials
from sweep.runner import DataPaths, SweepOptions, connect, load_datasets, needed_datasets, run_grid, trial_resources
from sweep.store import RunStore
from sweep.trainables import run_trial

SCORE = "val_jaccard"

# The paper's optimiser settings sit inside every range.
SUPERVISED_SPACE = {
    "lr": tune.loguniform(1e-5, 1e-2),
    "weight_decay": tune.loguniform(1e-6, 1e-2),
    "batch_size": tune.choice([2, 4, 8]),
}
# Loss weights of the transfer phase of `proposed` (the warm-up keeps the base weights, so
# every trial reuses one warmed translator).
PROPOSED_SPACE = {
    "w_seg": tune.loguniform(0.1, 10.0),
    "w_adv": tune.loguniform(0.1, 10.0),
    "w_cycle": tune.loguniform(1.0, 30.0),
    "w_recon": tune.loguniform(1.0, 30.0),
}


def tuned_cell(base: RunConfig, model: str, task: str, fold: int, method: str | None, label_fraction: float,
               target: str, repetition: int) -> list[TrialSpec]:
    """The cell being tuned, followed by its dependencies."""
    if method in (None, "supervised"):
        return [segmentation_trial(base, model, task, fold)]
    specs = transfer_trials(base, method, task, target, repetition, label_fraction)
    if specs[0].not_applicable:
        raise ValueError(f"--method {method} at --label-fraction {label_fraction:g}: {specs[0].not_applicable}")
    return specs


def _tune_trial(config: dict, datasets: dict) -> None:
    """One Optuna sample: the cell's spec with the sampled fields, run like any sweep trial."""
    cell = dict(config["cell"])
    sampled = {name: config[name] for name in config["sampled"]}
    cfg = RunConfig.from_dict(cell["spec"]["config"]).replace(**sampled)
    cell["spec"] = {**cell["spec"], "config": cfg.to_dict(),
                    "trial_id": f"{cell['spec']['trial_id']}-tune-{config_hash(cfg)}"}
    run_trial({**config, "trial": cell}, datasets)


def run_tuning(specs: list[TrialSpec], paths: DataPaths, options: SweepOptions, n_trials: int,
               best_file: Path, say=print) -> dict[str, Any]:
    """Search the cell `specs[0]` after running its dependencies; write and return the best config."""
    cell, dependencies = specs[0], specs[1:]
    store = RunStore(options.out)
    if dependencies:
        from sweep.grid import Grid

        grid = Grid()
        for spec in dependencies:
            grid.add(spec)
        outcome = run_grid(grid, paths, options, say=say)
        if not outcome.ok:
            raise RuntimeError(f"dependencies of {cell.trial_id} failed: {outcome.failed}")
    connect(options)
    datasets = load_datasets(needed_datasets([cell]), paths, cell.config.image_size, cell.config.crop_borders)
    space = dict(SUPERVISED_SPACE)
    if cell.config.method == "proposed":
        space.update(PROPOSED_SPACE)
    max_epochs = cell.config.transfer_epochs if cell.config.method == "proposed" else cell.config.epochs
    trainable = tune.with_resources(tune.with_parameters(_tune_trial, datasets=datasets),
                                    trial_resources(options, say))
    param_space = {
        # Tuning trials publish under OUT/tune (never into the result tables); M_A and the
        # warm-up are ordinary sweep trials under OUT.
        **space, "sampled": sorted(space), "out": store.uri("tune"), "dependencies_out": store.location,
        "cpus": options.cpus_per_trial,
        "checkpoint_every": options.checkpoint_every,
        "cell": {"spec": spec_to_dict(cell), "dependencies": [spec_to_dict(d) for d in dependencies]},
    }
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=SCORE, mode="max", num_samples=n_trials,
            search_alg=OptunaSearch(seed=cell.config.seed),
            # max_t one past the last epoch: ASHA stops a trial that reaches max_t, and a trial
            # must live through its last epoch to evaluate its best epoch and publish.
            scheduler=ASHAScheduler(time_attr="epoch", max_t=max_epochs + 1, grace_period=1, reduction_factor=2),
            max_concurrent_trials=options.max_concurrent or None,
        ),
        run_config=tune.RunConfig(name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=store.uri("ray"),
                                  failure_config=tune.FailureConfig(max_failures=options.retries), verbose=1),
    )
    results = tuner.fit()
    scored = [r for r in results if r.error is None and r.metrics and SCORE in r.metrics]
    if not scored:
        errors = "; ".join(str(r.error).strip().splitlines()[-1] for r in results if r.error is not None)
        raise RuntimeError(f"no tuning trial reported {SCORE}" + (f" (errors: {errors})" if errors else ""))
    best = results.get_best_result(metric=SCORE, mode="max", scope="all")
    chosen = {name: best.config[name] for name in space}
    record = {
        "config": chosen,
        "score": {"metric": SCORE, "value": float(best.metrics_dataframe[SCORE].max()),
                  "split": "validation (second-validation fold / target validation split), never test"},
        "cell": cell.trial_id, "trials": len(results), "errors": len(results.errors),
    }
    best_file.parent.mkdir(parents=True, exist_ok=True)
    best_file.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    say(f"[tune] best {SCORE} {record['score']['value']:.4f} over {len(results)} trials: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(chosen.items())))
    say(f"[tune] wrote {best_file}; apply it with: cxrsweep run ... --config-from {best_file}")
    return record
