"""Fused training (engine.fused, engine.fused.proposed, `cxrsweep run --fuse K`) against today's packing.

For each network (and "proposed": the proposed method's runs, M_A and the translator) and profile
it prints, side by side, the aggregate training images/s of
  - K trials fused into one computation (one process, one vmapped step: `grouped`), and, with
    `--steps grouped,each`, K trials fused but each member's network run on its own rows of the
    stacked state (`each`: what a fused trial does on a CPU, bit-exact with its separate run;
    engine.fused.stacking.grouped_on), and
  - K separate trials packed on the same device (K processes started together, each with its
    own run: what `--gpus-per-trial 1/K` does through Ray),
for K in --ks, each against one trial alone; the host memory (peak RSS) and, on a GPU, the
device memory of a fused trial. Then the projected paper grid on 1, 2, 4, 8 GPUs before (every
trial alone or packed, at the best measured packing) and after (Table I, M_A, finetune, scratch
and self-training trials fused at U-Net's best measured K, the proposed trials at their own when
measured in the same run, everything else as before), scheduled the way the sweep releases trials.

On a machine without a GPU the figures are CPU figures, and `paper` runs at bench_gpu's reduced
size (64 px, eighth-width networks); nothing here stands for a GPU it did not run on.

    python benchmarks/bench_fused.py                              # every network, cpu and paper
    python benchmarks/bench_fused.py --models unet --profiles cpu --ks 1,2,4 --epochs 2
    python benchmarks/bench_fused.py --equivalence --models unet  # fused against alone on this device

`benchmarks/gpu_check_fused.sh OUTDIR` runs it the way a GPU session should (one script).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from protocol.config import make_config  # noqa: E402
from protocol.durations import format_duration  # noqa: E402

GPU = torch.cuda.is_available()


def say(text: str = "") -> None:
    print(text, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_cfg(profile: str, model: str):
    """The profile's trial (paper at bench_gpu's reduced size on a CPU), no checkpoints; its
    thread count is the process's (set by the caller)."""
    from benchmarks.bench_gpu import bench_config

    cfg = bench_config(profile, not GPU, model=model, device="cuda" if GPU else "cpu")
    return cfg.replace(checkpoint_every_s=1e9, num_threads=0)


def data(n: int, size: int, seed: int):
    from benchmarks.bench_gpu import segmentation_data

    return segmentation_data(n, 2, size, seed=seed)


def _sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def trial(profile: str, model: str, n: int, seed: int, work: Path):
    """One trial's run: a Trainer of `model`, or (model "proposed") a ProposedRun at 100 % labels on
    `n` source and `n` target images (bench_gpu.proposed_run), whose "training images" per epoch
    are its `n` source images, each paired with a target image in the three steps."""
    if model == "proposed":
        from benchmarks.bench_gpu import proposed_config, proposed_run

        cfg = proposed_config(bench_cfg(profile, "unet")).replace(seed=seed)
        return proposed_run(cfg, n, n, max(2, n // 2), work)
    from engine.supervised import Trainer

    cfg = bench_cfg(profile, model)
    return Trainer(cfg.replace(seed=seed), data(n, cfg.image_size, seed), work)


def fused_rate(profile: str, model: str, k: int, n: int, epochs: int, grouped: bool) -> dict:
    """Aggregate training images/s of `k` fused trials (the first epoch not counted)."""
    from engine.fused.proposed import FusedProposedStep
    from engine.fused.supervised import FusedStep

    work = Path(tempfile.mkdtemp())
    trainers = [trial(profile, model, n, i, work / str(i)) for i in range(k)]
    step_type = FusedProposedStep if model == "proposed" else FusedStep
    if GPU:
        torch.cuda.reset_peak_memory_stats()
    states = [torch.get_rng_state() for _ in trainers]
    times = []
    for epoch in range(epochs + 1):
        _sync()
        started = time.perf_counter()
        step = step_type(trainers, states, grouped)
        outcomes = step.train_epoch()
        _sync()
        states = step.rng_states
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
        if epoch:
            times.append(time.perf_counter() - started)
        for t in trainers:
            t.epoch += 1
    seconds = statistics.median(times)
    return {"images_per_s": k * n / seconds, "epoch_s": seconds, "host_peak_mb": peak_rss_mb(),
            "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if GPU else None}


def _fused_child(profile: str, model: str, k: int, n: int, epochs: int, grouped: bool, out) -> None:
    # On a CPU the fused trial gets the cores its K separate trials would share (one each).
    torch.set_num_threads(min(k, os.cpu_count() or 1) if not GPU else torch.get_num_threads())
    out.put(fused_rate(profile, model, k, n, epochs, grouped))


def fused_in_child(profile: str, model: str, k: int, n: int, epochs: int, grouped: bool) -> dict:
    """fused_rate in a fresh process, so that its peak memory is the fused trial's own."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_fused_child, args=(profile, model, k, n, epochs, grouped, out))
    proc.start()
    result = out.get(timeout=3600)  # a crashed child would otherwise hang the benchmark
    proc.join()
    return result


def _separate(profile: str, model: str, n: int, epochs: int, seed: int, barrier, out) -> None:
    torch.set_num_threads(1)
    trainer = trial(profile, model, n, seed, Path(tempfile.mkdtemp()))
    trainer.train_epoch()  # warm
    _sync()
    barrier.wait()
    started = time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch()
    _sync()
    out.put(time.perf_counter() - started)


def packed_rate(profile: str, model: str, k: int, n: int, epochs: int) -> dict:
    """Aggregate training images/s of `k` separate trials sharing the device from one instant."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_separate, args=(profile, model, n, epochs, i, barrier, out)) for i in range(k)]
    for p in procs:
        p.start()
    times = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    return {"images_per_s": k * n * epochs / max(times)}


def measure(models: list[str], profiles: list[str], ks: list[int], n: int, epochs: int, steps: list[str],
            on_row: Callable[[dict], None] = lambda rows: None) -> dict:
    """Per profile, network and K: the packed rate and the fused rate of each step in `steps`
    (`grouped`, `each`); the row's "fused" is the device's own way (engine.fused.stacking.grouped_on).
    `on_row(rows)` after each row (a time limit then keeps the rows measured so far)."""
    from engine.fused.stacking import grouped_on

    own = "grouped" if grouped_on(torch.device("cuda" if GPU else "cpu")) else "each"
    rows = {}
    for profile in profiles:
        for model in models:
            cfg = bench_cfg(profile, "unet" if model == "proposed" else model)
            what = f"M_A width {cfg.width:g} + {cfg.translator} width {cfg.translator_width}" \
                if model == "proposed" else f"width {cfg.width:g}"
            say(f"\n{model}, {profile} profile ({cfg.image_size} px, {what}, batch {cfg.batch_size}, "
                f"{n} training images per trial; {'GPU' if GPU else 'CPU'} figures; fused steps: "
                f"{', '.join(steps)}, this device's own: {own})")
            say(f"  {'K':>2}  " + "".join(f"{step + ' img/s':>14}  {'x one':>6}  " for step in steps)
                + f"{'packed img/s':>12}  {'x one':>6}  {'host MB':>8}  {'device MB':>9}")
            one = packed_rate(profile, model, 1, n, epochs)  # one separate trial alone on the device
            for k in ks:
                fused = {step: fused_in_child(profile, model, k, n, epochs, step == "grouped") for step in steps}
                packed = one if k == 1 else packed_rate(profile, model, k, n, epochs)
                base = one["images_per_s"]
                main = fused.get(own, fused[steps[0]])
                device = f"{main['device_peak_mb']:9.0f}" if main["device_peak_mb"] is not None else f"{'-':>9}"
                say(f"  {k:>2}  " + "".join(f"{fused[step]['images_per_s']:14.1f}  "
                                            f"{fused[step]['images_per_s'] / base:6.2f}  " for step in steps)
                    + f"{packed['images_per_s']:12.1f}  {packed['images_per_s'] / base:6.2f}  "
                    f"{main['host_peak_mb']:8.0f}  {device}")
                rows[f"{profile}/{model}/{k}"] = {"fused": main, "packed": packed, "steps": fused}
                on_row(rows)
    return rows


def projection(rows: dict, gpus: list[int]) -> dict:
    """The paper grid's wall time before and after fusing, every trial's seconds from
    protocol.cost's model (bench_gpu's own engine measurements of one paper trial of each
    segmenter and of the proposed step, reduced on a CPU). A fluid model: a GPU running P trial
    slots gives each slot 1/P of its throughput, which for U-Net-like work is packed(P) x one
    trial's, and for segmentation trials fused K at a time fused(K) x one trial's."""
    from benchmarks import bench_gpu
    from protocol.cost import packing_kind, split_sizes, trial_seconds
    from protocol.grid import build_grid
    from sweep.fusing import group_key

    reduced = not GPU
    paper = bench_gpu.bench_config("paper", reduced)
    sizes = split_sizes()
    trial = bench_gpu.trial_sizes(reduced, sizes)
    with tempfile.TemporaryDirectory() as tmp:
        rates = {m: bench_gpu.measure_segmenter(paper.replace(model=m), trial["train"], trial["val"], Path(tmp))
                 for m in ("unet", "fcn", "segnet")}
        proposed = bench_gpu.measure_proposed(bench_gpu.proposed_config(paper), trial["source"], trial["target"],
                                              trial["target_val"], Path(tmp))
    specs = list(build_grid("all", make_config("paper")).runnable())
    alone = {s.trial_id: trial_seconds(s, rates, proposed, sizes, {"unet": 1.0, "proposed": 1.0},
                                       paper.checkpoint_every_s, 3.0)[0] for s in specs}
    speed = _speeds(rows, "unet")
    best_pack = max(speed["packed"], key=lambda k: speed["packed"][k])
    best_fuse = max(speed["fused"], key=lambda k: speed["fused"][k])
    # The proposed trials fuse at their own measured speed-up (engine.fused.proposed); unmeasured, they stay as before.
    proposed_speed = _speeds(rows, "proposed") if "paper/proposed/1" in rows else None
    best_proposed = max(proposed_speed["fused"], key=lambda k: proposed_speed["fused"][k]) if proposed_speed else None
    kinds: dict[str, float] = {}
    for spec in specs:
        label = spec.kind if spec.kind != "transfer" else f"transfer/{spec.config.method}"
        kinds[label] = kinds.get(label, 0.0) + alone[spec.trial_id]
    total = sum(kinds.values())
    say(f"\nprojected paper grid ({len(specs)} trials, {'GPU' if GPU else 'CPU, reduced size'} figures): "
        "trial-seconds by kind, one trial alone")
    for kind, value in sorted(kinds.items(), key=lambda kv: -kv[1]):
        say(f"  {kind:<24} {format_duration(value):>10}  {value / total:6.1%}")
    # Trials alone or packed best_pack to a GPU: the proposed method's at its own packing where measured.
    packing = {"unet": speed["packed"][best_pack],
               "proposed": (proposed_speed or {}).get("packed", {}).get(best_pack, speed["packed"][best_pack])}
    before = {s.trial_id: alone[s.trial_id] * best_pack / packing[packing_kind(s)] for s in specs}

    def fused(spec) -> float:
        """A trial's seconds per slot once what sweep.fusing.group_key fuses runs fused."""
        if group_key(spec) is None:
            return before[spec.trial_id]
        if packing_kind(spec) == "proposed":
            return alone[spec.trial_id] * best_pack / proposed_speed["fused"][best_proposed] if proposed_speed \
                else before[spec.trial_id]
        return alone[spec.trial_id] * best_pack / speed["fused"][best_fuse]

    after = {s.trial_id: fused(s) for s in specs}
    result = {"kinds_s": kinds, "best_packing": best_pack, "best_fuse": best_fuse, "best_fuse_proposed": best_proposed,
              "wall_s": {}}
    proposed_note = f"proposed {best_proposed} at a time" if proposed_speed else "proposed alone (not measured here)"
    for n in gpus:
        wall = {"before": bench_gpu.makespan(specs, before, n * best_pack),
                "after": bench_gpu.makespan(specs, after, n * best_pack)}
        result["wall_s"][n] = wall
        say(f"  {n} GPU{'s' if n > 1 else ' '}: before {format_duration(wall['before'])} ({best_pack} packed per "
            f"GPU), after {format_duration(wall['after'])} (Table I, M_A, finetune, scratch and self-training "
            f"trials fused {best_fuse} at a time, {proposed_note})")
    return result


def _speeds(rows: dict, model: str) -> dict[str, dict[int, float]]:
    """Per measured K, packed and fused images/s of `model` at paper size against one of its trials alone."""
    one = rows[f"paper/{model}/1"]["packed"]["images_per_s"]
    ks = sorted(int(key.rsplit("/", 1)[1]) for key in rows if key.startswith(f"paper/{model}/"))
    return {kind: {k: rows[f"paper/{model}/{k}"][kind]["images_per_s"] / one for k in ks}
            for kind in ("packed", "fused")}


def equivalence(models: list[str], epochs: int) -> dict:
    """The 5 JSRT-phantom folds of each network (smoke profile, as tests/engine/fused/test_fused.py)
    trained fused on this device, the device's own way (engine.fused.stacking.grouped_on), against the
    same folds trained one by one: per fold the test-Jaccard gap and whether the best epoch agrees.
    On the CPU the gaps are 0 (member by member is bit-exact); on a GPU they are the vmapped
    step's rounding (and cuDNN's own run-to-run differences)."""
    from data_io.cache import load_jsrt
    from data_io.phantoms import synthesize
    from engine.data.segmentation import segmentation_data
    from engine.fused.stacking import grouped_on
    from engine.fused.supervised import Member, train_fused
    from engine.supervised import train_supervised

    device = "cuda" if GPU else "cpu"
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = synthesize(root / "data", n_source=13, n_target=0, source_size=96, seed=5)
        jsrt = load_jsrt(folders["jsrt"], folders["scr"], 64, cache_dir=root / "cache")
        step = "vmapped" if grouped_on(torch.device(device)) else "member by member"
        say(f"\nfused against alone on {device} ({step} step), 5 JSRT-phantom folds, smoke profile, {epochs} epochs")
        for model in (m for m in models if m != "proposed"):
            members = []
            for fold in range(5):
                cfg = make_config("smoke", model=model, task="lungs", fold=fold, epochs=epochs, device=device,
                                  num_threads=1)
                members.append(Member(cfg, segmentation_data(cfg, jsrt), root / model / "fused" / str(fold)))
            alone = [train_supervised(m.cfg, m.data, root / model / "alone" / str(k)) for k, m in enumerate(members)]
            fused = train_fused(members)
            failed = [r for r in fused if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            gaps = [abs(a.test_jaccard_mean - b.test_jaccard_mean) for a, b in zip(alone, fused)]
            same = sum(a.best_epoch == b.best_epoch for a, b in zip(alone, fused))
            say(f"  {model:<7} test-Jaccard gap per fold {' '.join(f'{g:.1e}' for g in gaps)}; "
                f"same best epoch in {same} of 5")
            figures[model] = {"gaps": gaps, "same_best_epoch": same}
    if "proposed" in models:
        figures["proposed"] = equivalence_proposed(epochs)
    return figures


def equivalence_proposed(epochs: int) -> dict:
    """The proposed method's runs at 0, 50 and 100 % labels of a Montgomery phantom (smoke profile,
    an M_A trained 4 epochs on fold 0 of 13 JSRT phantoms, a translator warmed 2 epochs) trained
    fused on this device, the device's own way, against the same runs one by one: per run the
    test-Jaccard gap, the largest gap of an epoch's supervised loss, and whether the kept epoch
    agrees. On the CPU the gaps are 0; on a GPU they are the vmapped step's rounding and its own
    draws of random styles (tests/engine/fused/test_fused_proposed.py checks both ways on the CPU)."""
    from functools import partial

    from data_io.cache import load_jsrt, load_target
    from data_io.phantoms import synthesize
    from engine.data.segmentation import segmentation_data
    from engine.data.transfer import transfer_data
    from engine.fused.proposed import FusedProposedStep
    from engine.fused.stacking import grouped_on
    from engine.fused.supervised import Member, train_fused
    from engine.supervised import train_supervised
    from engine.transfer.dispatch import proposed_run, train_transfer
    from engine.transfer.proposed.warmup import warmup_translator
    from protocol.run_dir import best_checkpoint_path

    device = "cuda" if GPU else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = synthesize(root / "data", n_source=13, n_target=12, source_size=96, target_size=96, seed=5)
        jsrt = load_jsrt(folders["jsrt"], folders["scr"], 64, cache_dir=root / "cache")
        target = load_target("montgomery", folders["montgomery"], 64, cache_dir=root / "cache")
        base = make_config("smoke", model="unet", task="lungs", fold=0, epochs=4, warmup_epochs=2,
                           transfer_epochs=epochs, device=device, num_threads=1)
        train_supervised(base, segmentation_data(base, jsrt), root / "m_a")
        m_a = best_checkpoint_path(root / "m_a")
        translator = warmup_translator(base, jsrt, target, root / "translators")
        step = "vmapped" if grouped_on(torch.device(device)) else "member by member"
        say(f"\nproposed fused against alone on {device} ({step} step), 0 / 50 / 100 % Montgomery-phantom labels, "
            f"smoke profile, {epochs} epochs")
        configs = [base.replace(experiment="transfer", method="proposed", label_fraction=fraction)
                   for fraction in (0.0, 50.0, 100.0)]
        alone = [train_transfer(cfg, transfer_data(cfg, jsrt, target), root / "alone" / str(k), m_a, translator)
                 for k, cfg in enumerate(configs)]
        members = [Member(cfg, None, root / "fused" / str(k), step=FusedProposedStep,
                          trainer=partial(proposed_run, cfg, transfer_data(cfg, jsrt, target), root / "fused" / str(k),
                                          m_a, translator)) for k, cfg in enumerate(configs)]
        fused = train_fused(members)
        failed = [r for r in fused if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        gaps = [abs(a.test_jaccard_mean - b.test_jaccard_mean) for a, b in zip(alone, fused)]
        losses = [max(abs(x["S_source"] - y["S_source"]) for x, y in zip(a.history, b.history))
                  for a, b in zip(alone, fused)]
        same = sum(a.best_epoch == b.best_epoch for a, b in zip(alone, fused))
        say(f"  proposed test-Jaccard gap per run {' '.join(f'{g:.1e}' for g in gaps)}; largest supervised-loss gap "
            f"per run {' '.join(f'{g:.1e}' for g in losses)}; same kept epoch in {same} of 3")
    return {"gaps": gaps, "loss_gaps": losses, "same_best_epoch": same}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="unet,fcn,segnet,proposed",
                        help="networks to time; proposed: the proposed method's runs (M_A and the translator)")
    parser.add_argument("--profiles", default="cpu,paper")
    parser.add_argument("--ks", default="1,2,4,5,8")
    parser.add_argument("--images", type=int, default=None,
                        help="training images per trial (default: 8 on a CPU, the paper's 148 on a GPU)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--gpus", default="1,2,4,8")
    parser.add_argument("--steps", default="grouped" if GPU else "grouped,each",
                        help="fused steps to time: grouped (one vmapped computation), each (member by member)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--rows-from", nargs="*", default=[],
                        help="--json files of earlier runs whose rows join this run's in the projection (e.g. "
                             "U-Net's, for a run that measures only the proposed method)")
    parser.add_argument("--equivalence", action="store_true",
                        help="instead: train the 5 phantom folds of each network (and, for proposed, three "
                             "label fractions) fused and alone on this device (smoke profile, 4 epochs, as "
                             "tests/engine/fused/test_fused.py and tests/engine/fused/test_fused_proposed.py)")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    n = args.images or (148 if GPU else 8)
    say(f"device: {torch.cuda.get_device_name() if GPU else 'CPU only: every figure below is a CPU figure'}; "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores")
    if args.equivalence:
        figures = {"equivalence": equivalence(args.models.split(","), 4), "gpu": GPU}
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
        return 0
    def write(figures: dict) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str))

    # Written after each row, and again with the projection: a time limit keeps what was measured.
    rows = measure(args.models.split(","), args.profiles.split(","), ks, n, args.epochs, args.steps.split(","),
                   on_row=lambda rows: write({"rows": rows, "gpu": GPU, "images": n}))
    figures = {"rows": rows, "gpu": GPU, "images": n}
    write(figures)
    earlier = {}
    for path in map(Path, args.rows_from):
        if path.is_file():
            earlier.update(json.loads(path.read_text())["rows"])
        else:
            say(f"\n{path} does not exist (its run did not get that far): the projection goes without its rows")
    rows_all = {**earlier, **rows}
    if "paper" in args.profiles.split(",") and "paper/unet/1" in rows_all:  # the projection's yardstick
        figures["projection"] = projection(rows_all, [int(g) for g in args.gpus.split(",")])
        write(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
