"""How close fused trials come to the same trials run alone, against how close two runs alone come
when only their thread count differs. Prints one line per kind of trial and network.

Three sweeps of one slice of the `all` grid (default: the demo's slice, `demo` profile) on the
demo's phantoms, through `cxrsweep run`:

- `alone`: every trial alone, one thread each (what `cxrsweep demo` runs);
- `threads`: every trial alone on `--threads` threads, one at a time (other summation orders);
- `fused`: `--fuse K`, trials that may be fused trained K at a time (engine.fused).

For every cell: |test Jaccard of alone - test Jaccard of the other| and whether the best epoch is
the same. On a GPU a fused member is the same computation as its run alone except for the order
in which the grouped convolutions sum (about 1e-7 apart per layer), as the thread count is; over
20 epochs of batch-2 training both perturbations grow into the spread of the training itself. A
fused path with a bug (a member reading another's images, statistics or optimiser state) shows
as a spread well above the thread count's. Downstream cells (transfer trials on a fused M_A)
inherit their dependency's spread. On the CPU a fused trial runs member by member
(engine.fused.stacking.grouped_on) and is its run alone bit for bit: the fused lines read 0 (a finished
sweep in --work is reused as it is, so remove one that an older cxrsweep made).

`python benchmarks/bench_fused_equivalence.py --work DIR` (about 15 minutes on 2 CPU cores at the
default slice; a finished sweep in DIR is reused, so a rerun only prints).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CELL = ["experiment", "model", "task", "fold", "method", "label_fraction", "repetition", "cfg_augmentation"]


def sweep(out: Path, data_flags: list[str], args, extra: list[str]) -> None:
    command = [sys.executable, "-m", "commands.main", "run", "all", "--profile", args.profile, "--folds", args.folds,
               "--repetitions", "0", "--fractions", args.fractions, "--augmentations", args.augmentations,
               "--out", str(out), "--progress-every", "60", *data_flags, *extra]
    print(f"[bench] {out.name}: {' '.join(command[3:])}", flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{out.name} sweep failed ({done.returncode}):\n{done.stdout[-4000:]}")
    print(next((line for line in reversed(done.stdout.splitlines()) if line.startswith("[sweep] finished")), ""))


def cells(out: Path):
    from protocol.results import read_trials

    trials = read_trials(out)
    trials = trials[trials.status == "ok"]
    return trials.set_index(trials[CELL].apply(lambda row: "|".join(map(str, row)), axis=1))


def compare(alone, other, label: str) -> None:
    shared = alone.index.intersection(other.index)
    a, b = alone.loc[shared], other.loc[shared]
    print(f"\nalone (1 thread) against {label}: {len(shared)} cells")
    print(f"  {'kind':<28} {'model':<7} {'n':>3}  {'mean |dJ|':>9}  {'max |dJ|':>8}  same best epoch")
    kinds = a.experiment + "/" + a.method
    for (kind, model), group in a.groupby([kinds, a.model]):
        gap = (group.test_jaccard_mean - b.loc[group.index, "test_jaccard_mean"]).abs()
        same = int((group.best_epoch == b.loc[group.index, "best_epoch"]).sum())
        print(f"  {kind:<28} {model:<7} {len(group):>3}  {gap.mean():9.4f}  {gap.max():8.4f}  {same}/{len(group)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder of the three sweeps (reused when finished)")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("--fractions", default="0,10,50,100")
    parser.add_argument("--augmentations", default="none,robust")
    parser.add_argument("--fuse", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from commands.grid_runs import demo_phantoms

    work = Path(args.work)
    phantoms = demo_phantoms(None, None)
    data_flags = ["--jsrt", phantoms["jsrt"], "--scr", phantoms["scr"], "--montgomery", phantoms["montgomery"]]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only: CPU figures"
    print(f"[bench] device: {device}; {os.cpu_count()} CPU cores", flush=True)
    runs = {"alone": ["--set", "num_threads=1"],
            "threads": ["--set", f"num_threads={args.threads}", "--cpus-per-trial", str(args.threads)],
            "fused": ["--set", "num_threads=1", "--fuse", str(args.fuse)]}
    for name, extra in runs.items():
        sweep(work / name, data_flags, args, extra)
    alone = cells(work / "alone")
    compare(alone, cells(work / "threads"), f"alone on {args.threads} threads")
    compare(alone, cells(work / "fused"), f"fused {args.fuse} at a time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
