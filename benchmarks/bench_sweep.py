"""Ray's cost in the sweep: overhead ratio inside a trial, scheduling latency per trial, and the
wall time of a smoke grid. Prints its figures; run `python benchmarks/bench_sweep.py --help`.

- Overhead ratio: the same supervised run (smoke profile, more epochs) called directly and run
  as a Tune trial; ratio = direct engine time / engine time inside the trial (per-epoch
  `tune.report` and the checkpoints of the interval policy included). 1.0 means Ray costs
  nothing inside the trial.
- Scheduling latency: trials run one at a time; latency per trial = (sweep wall time - time
  spent inside the trainables) / trials: actor start, data hand-over, result handling.
- Smoke grid wall time: a smoke-profile grid run as `cxrsweep run` would (default: Table I at
  fold 0, all models and tasks; `--grid demo` runs the demo's `all` grid).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _trial_infos(out: Path, ids) -> list[dict]:
    infos = []
    for trial_id in ids:
        for folder in ("runs", "translators"):
            path = out / folder / trial_id / "trial.json"
            if path.is_file():
                infos.append(json.loads(path.read_text()))
    return infos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the overhead-ratio run (default 10)")
    parser.add_argument("--latency-trials", type=int, default=4, help="trials of the latency run (default 4)")
    parser.add_argument("--grid", choices=("table1-fold0", "demo"), default="table1-fold0")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    args = parser.parse_args()

    import ray

    from data_io.cache import load_jsrt
    from data_io.phantoms import synthesize
    from engine.data.segmentation import segmentation_data
    from engine.supervised import train_supervised
    from protocol.config import make_config
    from protocol.grid import build_grid
    from sweep.inputs import DataPaths
    from sweep.options import SweepOptions
    from sweep.runner import run_grid

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-sweep-"))
    phantoms = {k: str(v) for k, v in synthesize(work / "phantoms", n_source=40, n_target=30, source_size=256,
                                                 target_size=256).items()}
    paths = DataPaths(jsrt=phantoms["jsrt"], scr=phantoms["scr"], montgomery=phantoms["montgomery"],
                      cache_dir=str(work / "cache"))
    quiet = lambda line: None  # noqa: E731
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024 * 1024)
    print(f"bench_sweep: {cpus} CPU(s), Ray {ray.__version__}, work folder {work}")

    # 1. Overhead ratio: one run directly, the same run as a trial (one thread each).
    base = make_config("smoke", {"epochs": args.epochs, "num_threads": 1, "device": "cpu"})
    grid = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0])
    (spec,) = grid.trials.values()
    dataset = load_jsrt(paths.jsrt, paths.scr, base.image_size, cache_dir=paths.cache_dir)
    started = time.perf_counter()
    train_supervised(spec.config, segmentation_data(spec.config, dataset), work / "direct" / spec.trial_id)
    direct_s = time.perf_counter() - started
    run_grid(grid, paths, SweepOptions(out=str(work / "overhead"), cpus_per_trial=1), say=quiet)
    (info,) = _trial_infos(work / "overhead", grid.trials)
    ratio = direct_s / info["engine_s"]
    print(f"overhead ratio (direct / in-trial engine time, U-Net smoke, {args.epochs} epochs): {ratio:.3f} "
          f"[direct {direct_s:.2f} s, in trial {info['engine_s']:.2f} s] target >= 0.9: "
          f"{'PASS' if ratio >= 0.9 else 'FAIL'}")

    # 2. Scheduling latency: trials one at a time.
    serial = build_grid("segmentation", make_config("smoke", {"num_threads": 1, "seed": 11}), models=["unet"],
                        tasks=["lungs"], folds=list(range(args.latency_trials)))
    outcome = run_grid(serial, paths, SweepOptions(out=str(work / "latency"), cpus_per_trial=1, max_concurrent=1),
                       say=quiet)
    inside = sum(i["finished_at"] - i["started_at"] for i in _trial_infos(work / "latency", serial.trials))
    latency = (outcome.wall_s - inside) / len(serial.trials)
    print(f"scheduling latency per trial ({len(serial.trials)} trials, one at a time): {latency:.2f} s "
          f"[sweep {outcome.wall_s:.1f} s, inside trainables {inside:.1f} s]")

    # 3. A smoke grid, all CPUs.
    smoke = make_config("smoke", {"num_threads": 1})
    if args.grid == "demo":
        full = build_grid("all", smoke, folds=[0, 1], repetitions=[0, 1], fractions=[0, 5, 100])
    else:
        full = build_grid("segmentation", smoke, folds=[0])
    outcome = run_grid(full, paths, SweepOptions(out=str(work / "grid"), cpus_per_trial=1), say=quiet)
    durations = [i["finished_at"] - i["started_at"] for i in _trial_infos(work / "grid", full.trials)]
    print(f"smoke grid '{args.grid}' wall time: {outcome.wall_s:.1f} s for {len(full.runnable())} trials "
          f"({len(outcome.failed)} failed) on {cpus} CPU(s); median trial {statistics.median(durations):.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
