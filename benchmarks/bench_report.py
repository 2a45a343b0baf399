"""How long `cxrsweep report` takes on a sweep of the demo's size, and on one of the paper's.

Writes a fake sweep with the test suite's generator (real Parquet files in the declared schema,
a PNG overlay set in every finished run, as the engine saves them), then times `build_report`
in a fresh interpreter, imports included, since that is what a user waits for.

    python benchmarks/bench_report.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
# Grid sizes: every task x model x fold of Table I, every fraction x method x repetition of Table II.
SIZES = {
    # The demo: phantoms, 5 folds, 5 repetitions, small test splits, 4 overlays a run.
    "demo": dict(n_folds=5, n_repetitions=5, images_per_fold=8, target_test_images=8, overlays_in_every_run=4),
    # The paper: JSRT's 247 images in 5 folds, Montgomery's 138 split 60/20/20.
    "paper": dict(n_folds=5, n_repetitions=5, images_per_fold=50, target_test_images=28, overlays_in_every_run=4),
}


def load_fake_sweep_writer():
    path = REPO / "tests" / "analysis" / "conftest.py"
    spec = importlib.util.spec_from_file_location("analysis_fake_sweep", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module.write_fake_sweep


def time_report(out_dir: Path, ci: str) -> float:
    code = f"from analysis.report import build_report; build_report({str(out_dir)!r}, ci={ci!r})"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the fake sweeps here and keep them")
    args = parser.parse_args()
    write_fake_sweep = load_fake_sweep_writer()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        print(f"{'sweep':<6} {'trials':>6} {'images':>7} {'overlays':>8} {'ci':>9} {'seconds':>8}")
        for name, size in SIZES.items():
            out_dir = root / name
            write_fake_sweep(out_dir, **size)
            trials = pq.read_metadata(out_dir / "results" / "trials.parquet").num_rows
            images = pq.read_metadata(out_dir / "results" / "images.parquet").num_rows
            overlays = len(list((out_dir / "runs").glob("*/overlays/*.png")))
            for ci in ("t", "bootstrap"):
                seconds = time_report(out_dir, ci)
                print(f"{name:<6} {trials:>6} {images:>7} {overlays:>8} {ci:>9} {seconds:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
