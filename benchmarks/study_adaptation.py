"""How well each label-free guard signal (engine/evaluation/guard.py) ranks adapted models the way their true
target Jaccard does, on phantoms: the evidence the harm guard's rule rests on.

For each phantom regime and repetition it trains M_A (the U-Net of the matching JSRT fold) and the
translator warm-up, then each adaptation run of `--runs` at 0 % target labels through the engine's
own epoch loop, and after every epoch scores the candidate the run would keep (epoch 0: M_A as it
is) by every guard signal and, for this study only, by its true Jaccard on the target validation
and test images. The runs never see those labels: they are read here, after the fact, to judge
the signals. Rows go to `--work/candidates.csv` as they come (a rerun skips the runs already
there), then it prints, per regime:

- per signal, Spearman's rank correlation between its change over M_A and the change of the true
  test Jaccard, over every trained candidate epoch of every run (and the median of the same
  correlation within single runs);
- per run, what its fixed schedule (the last epoch) gained on the test images, and the change of
  each signal at that epoch.

    python benchmarks/study_adaptation.py --phantoms mild=ph-mild,severe=ph-severe --repetitions 0,1,2 \\
        --runs self_training proposed --work study
    python benchmarks/study_adaptation.py ... --runs "st_fast=self_training:transfer_epochs=4"

`--runs` entries are a method name or NAME=METHOD:key=value,key=value (config overrides).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from commands.transfer import train_source_model
from data_io.cache import load_jsrt, load_target
from engine.data.transfer import transfer_data
from engine.evaluation.guard import SIGNALS, GuardSignals, weigh
from engine.evaluation.scoring import SplitScorer
from engine.runtime.device import torch_threads
from engine.transfer.dispatch import proposed_run, transfer_trainer
from engine.transfer.proposed.warmup import warmup_translator
from models.loading import TranslateThenSegment
from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint
from protocol.config import make_config
from protocol.grid import config_hash, source_model_config
from protocol.run_dir import best_checkpoint_path

TRUTH = ("truth_val", "truth_test")


def parse_run(text: str) -> tuple[str, str, dict[str, str]]:
    name, _, spec = text.partition("=")
    if not spec:
        return name, name, {}
    method, _, overrides = spec.partition(":")
    pairs = dict(item.split("=", 1) for item in overrides.split(",") if item)
    return name, method, pairs


def source_model(cfg, source, work: Path, regime: str) -> Path:
    """M_A of the repetition, trained once per regime and M_A config (its hash names the folder)."""
    run_dir = work / "m_a" / regime / f"rep{cfg.repetition}-{config_hash(source_model_config(cfg))}"
    path = best_checkpoint_path(run_dir)
    return path if path.is_file() else train_source_model(cfg, source, run_dir)


class Truth:
    """The candidate's Jaccard on the labelled target validation and test images (this study only)."""

    def __init__(self, data, device):
        self.val = SplitScorer(data.target_val_images, data.target_val_masks, data.target_val_frame, device)
        self.test = SplitScorer(data.target_test_images, data.target_test_masks, data.target_test_frame, device)

    def __call__(self, model) -> dict[str, np.ndarray]:
        return {"truth_val": self.val(model)[0], "truth_test": self.test(model)[0]}


def candidate_of(run) -> TranslateThenSegment:
    if hasattr(run, "translation"):  # the proposed method: M_A(G_BA(b)) as it stands
        return run.model
    return TranslateThenSegment(run.candidate())


def study_run(regime: str, repetition: int, name: str, method: str, overrides: dict[str, str], args,
              source, target, writer) -> None:
    cfg = make_config(args.profile, {**dict(item.split("=", 1) for item in args.overrides), **overrides},
                      experiment="transfer", method=method, task="lungs", label_fraction=args.fraction,
                      target="montgomery", repetition=repetition)
    work = Path(args.work)
    data = transfer_data(cfg, source, target)
    segmenter = source_model(cfg, source, work, regime)
    run_dir = work / "runs" / regime / f"rep{repetition}" / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    started = time.perf_counter()
    with torch_threads(cfg.num_threads):
        if method == "proposed":
            translator = warmup_translator(cfg, source, target, work / "translators" / regime)
            run = proposed_run(cfg, data, run_dir, segmenter, translator)
        else:
            run = transfer_trainer(cfg, data, run_dir, segmenter)
        device = run.device
        signals, truth = GuardSignals(data, device), Truth(data, device)
        run.begin()
        m_a = TranslateThenSegment(segmenter_from_checkpoint(read_segmenter_checkpoint(segmenter))).to(device)

        def record(epoch: int, model) -> None:
            evidence = signals(model).values
            evidence.update(truth(model))
            writer({"regime": regime, "repetition": repetition, "run": name, "method": method, "epoch": epoch,
                    **{key: json.dumps([round(float(v), 5) for v in value]) for key, value in evidence.items()}})

        record(0, m_a)
        while run.epoch < run.total_epochs:
            epoch_started = time.perf_counter()
            run.end_epoch(run.epoch_metrics(), epoch_started, ())
            record(run.epoch, candidate_of(run))
    print(f"{regime} rep {repetition} {name}: {run.total_epochs} epochs, {time.perf_counter() - started:.0f} s",
          flush=True)


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["repetition"], row["epoch"] = int(row["repetition"]), int(row["epoch"])
        for key in (*SIGNALS, *TRUTH):
            row[key] = np.asarray(json.loads(row[key]), float)
    return rows


def guard_verdicts(runs: dict[tuple, list[dict]], regime: str, tolerances: dict[str, float], rescue_gain: float,
                   material: float = 0.005) -> None:
    """The harm guard (engine.evaluation.guard.weigh, the defaults' tolerances) applied to every trained candidate
    epoch as if the schedule ended there, against the truth: how many candidates that lost more than
    `material` on the test images it refused, and how many that gained more than that it kept."""
    counts = {"lost": [0, 0], "gained": [0, 0], "even": [0, 0]}
    for key, epochs in runs.items():
        if key[0] != regime:
            continue
        epochs = sorted(epochs, key=lambda row: row["epoch"])
        start = epochs[0]
        for row in epochs[1:]:
            decision = weigh({name: row[name] for name in ("source", "plausibility")},
                             {name: start[name] for name in ("source", "plausibility")}, tolerances, rescue_gain)
            change = row["truth_test"].mean() - start["truth_test"].mean()
            kind = "lost" if change < -material else "gained" if change > material else "even"
            counts[kind][0] += 1
            counts[kind][1] += int(decision.keep_adaptation)
    lost, gained, even = counts["lost"], counts["gained"], counts["even"]
    print(f"  harm guard over every candidate epoch: refused {lost[0] - lost[1]} of {lost[0]} that lost more than "
          f"{100 * material:g} points on the test images, kept {gained[1]} of {gained[0]} that gained more than that, "
          f"kept {even[1]} of {even[0]} within it")


def report(rows: list[dict], guard_cfg, only: str | None = None) -> None:
    """The study's tables; the guard verdicts with `guard_cfg`'s tolerances (the runs' config)."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        if only and not re.search(only, row["run"]):
            continue
        runs.setdefault((row["regime"], row["repetition"], row["run"]), []).append(row)
    for regime in sorted({key[0] for key in runs}):
        deltas: dict[str, list[float]] = {key: [] for key in (*SIGNALS, *TRUTH)}
        within: dict[str, list[float]] = {key: [] for key in SIGNALS}
        print(f"\n== {regime}: rank correlation with the true target test Jaccard (change over M_A, "
              "every trained epoch of every run) ==")
        for key, epochs in sorted(runs.items()):
            if key[0] != regime:
                continue
            epochs = sorted(epochs, key=lambda row: row["epoch"])
            start = epochs[0]
            for row in epochs[1:]:
                for name in deltas:
                    deltas[name].append(float(row[name].mean() - start[name].mean()))
            truth = [row["truth_test"].mean() for row in epochs]
            for name in SIGNALS:
                rho = spearmanr([row[name].mean() for row in epochs], truth).statistic
                if not math.isnan(rho):
                    within[name].append(float(rho))
        n = len(deltas["truth_test"])
        for name in SIGNALS:
            rho = spearmanr(deltas[name], deltas["truth_test"]).statistic if n > 2 else float("nan")
            median = float(np.median(within[name])) if within[name] else float("nan")
            print(f"  {name:>12}: pooled Spearman {rho:+.2f} over {n} candidates; within runs median {median:+.2f} "
                  f"({len(within[name])} runs)")
        rho = spearmanr(deltas["truth_val"], deltas["truth_test"]).statistic if n > 2 else float("nan")
        print(f"  {'(val truth)':>12}: pooled Spearman {rho:+.2f} (labelled validation images: the ceiling)")
        guard_verdicts(runs, regime, {"source": guard_cfg.guard_source_drop,
                                      "plausibility": guard_cfg.guard_collapse_drop}, guard_cfg.guard_rescue_gain)
        print(f"\n  {regime}: the fixed schedule's result (last epoch) against M_A, means over images")
        print(f"  {'run':<28} {'rep':>3} {'M_A test':>8} {'d test':>7} {'d val':>7} "
              + " ".join(f"{'d ' + name[:6]:>8}" for name in SIGNALS))
        for key, epochs in sorted(runs.items()):
            if key[0] != regime:
                continue
            epochs = sorted(epochs, key=lambda row: row["epoch"])
            start, last = epochs[0], epochs[-1]
            change = {name: float(last[name].mean() - start[name].mean()) for name in (*SIGNALS, *TRUTH)}
            print(f"  {key[2]:<28} {key[1]:>3} {start['truth_test'].mean():8.4f} {change['truth_test']:+7.4f} "
                  f"{change['truth_val']:+7.4f} " + " ".join(f"{change[name]:+8.4f}" for name in SIGNALS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", required=True, help="REGIME=DIR,... (folders of `cxrsweep data synth`)")
    parser.add_argument("--repetitions", default="0,1,2")
    parser.add_argument("--runs", nargs="+", default=["self_training", "proposed"])
    parser.add_argument("--fraction", type=float, default=0.0, help="target label fraction of every run (percent)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run")
    parser.add_argument("--work", required=True)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--only", metavar="REGEX", help="report only the runs whose name matches")
    args = parser.parse_args()
    path = Path(args.work) / "candidates.csv"
    if not args.report_only:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        done = {(row["regime"], row["repetition"], row["run"]) for row in load_rows(path)}
        fields = ["regime", "repetition", "run", "method", "epoch", *SIGNALS, *TRUTH]
        base = make_config(args.profile, args.overrides)
        for regime, folder in (item.split("=", 1) for item in args.phantoms.split(",")):
            folder = Path(folder)
            source = load_jsrt(folder / "jsrt", folder / "scr", base.image_size, crop_borders=base.crop_borders)
            target = load_target("montgomery", folder / "montgomery", base.image_size, crop_borders=base.crop_borders)
            for repetition in (int(r) for r in args.repetitions.split(",")):
                for spec in args.runs:
                    name, method, overrides = parse_run(spec)
                    if (regime, repetition, name) in done:
                        continue
                    rows: list[dict] = []
                    study_run(regime, repetition, name, method, overrides, args, source, target, rows.append)
                    new = not path.is_file()
                    with path.open("a", newline="") as handle:
                        out = csv.DictWriter(handle, fieldnames=fields)
                        if new:
                            out.writeheader()
                        out.writerows(rows)
    report(load_rows(path), make_config(args.profile, args.overrides), args.only)


if __name__ == "__main__":
    main()
