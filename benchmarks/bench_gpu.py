"""The paper-scale sweep on one GPU: what a trial costs, whether packing trials pays, what the
checkpoints cost, and how long the whole paper grid would take. Prints four parts, each as it
is measured, in the order (a), (c), (b), (d) (a timeout still leaves the earlier figures;
`--budget-s` stops (b) early so that (d) is printed):

(a) training images/s of one `paper` trial of each segmenter (256 px, batch 4; U-Net first)
    and of one proposed-method transfer epoch (the discriminative, generative and supervised
    steps), measured with the engines' own code on synthetic arrays of the real set sizes;
(b) aggregate training images/s with 1, 2, 4 and 8 U-Net trials packed on one GPU through Ray
    (eight actors share the GPU, K of them train at once), per profile, and the packing it
    recommends (`--gpus-per-trial`, sweep.config.GPUS_PER_TRIAL);
(c) checkpoint seconds as a fraction of a trial's training time, at the default interval
    (`checkpoint_every_s`) and as if every epoch were checkpointed (the old policy);
(d) the projected wall time of the whole paper grid (Table I + Table II + Fig. 9, 150 epochs)
    on N such GPUs: every trial of `sweep.grid.build_grid("all", paper)` gets a duration from
    (a)-(c) and the list is scheduled the way the sweep releases trials (sweep.scheduling).

On a machine without a GPU it runs at reduced size (64 px, narrow networks, fewer images) and
says so: its figures then describe this CPU, not a GPU.

    python benchmarks/bench_gpu.py                        # everything, full size on a GPU
    python benchmarks/bench_gpu.py --json out.json --packing-seconds 10 --profiles paper,cpu
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sweep.config import GPUS_PER_TRIAL, RunConfig, make_config  # noqa: E402

# The paper's sets as distributed: JSRT (Table I, source) and Montgomery (Table II target).
PAPER_CASES = {"jsrt": 247, "montgomery": 138}
PACKINGS = (1, 2, 4, 8)
# Settings that make a CPU run of this script finish in minutes.
REDUCED = {"image_size": 64, "width": 0.125, "translator_width": 8}
REDUCED_IMAGES = 16  # training images per epoch on a CPU (the GPU uses the real split sizes)


def say(text: str = "") -> None:
    print(text, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def bench_config(profile: str, reduced: bool, **keys) -> RunConfig:
    overrides = dict(REDUCED) if reduced and profile == "paper" else {}
    overrides.update(num_threads=0 if torch.cuda.is_available() else 1)
    return make_config(profile, overrides, **keys)


def split_sizes(seed: int = 0) -> dict[str, int]:
    """Images per split of the paper's sets at fold / repetition 0 (sweep/data splits)."""
    from data_io.splits import cv_split, transfer_split

    jsrt = cv_split(PAPER_CASES["jsrt"], 0, seed=seed)
    target = transfer_split(PAPER_CASES["montgomery"], 0, seed=seed)
    return {"jsrt_train": len(jsrt.train), "jsrt_val": len(jsrt.val), "jsrt_test": len(jsrt.test),
            "target_train": len(target.train), "target_val": len(target.val), "target_test": len(target.test)}


def synthetic_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random standardised images and random masks: throughput does not depend on content."""
    return rng.standard_normal((n, size, size)).astype(np.float32), (rng.random((n, size, size)) < 0.3).astype(np.uint8)


def segmentation_data(n_train: int, n_val: int, size: int, seed: int = 0):
    from sweep.engine.data import SegmentationData

    rng = np.random.default_rng(seed)
    train, val, test = (synthetic_images(n, size, rng) for n in (n_train, n_val, 4))
    return SegmentationData(*train, *val, *test, test_ids=[f"bench{i}" for i in range(4)], task="lungs",
                            dataset="synthetic")


# ---------------------------------------------------------------------------------------------
# (a) one trial


def measure_segmenter(cfg: RunConfig, n_train: int, n_val: int, work: Path) -> dict:
    """Train/eval images/s of one trial (3 epochs, the first not counted: cuDNN autotuning),
    with last.pt written every epoch so its cost can be read."""
    from sweep.engine.supervised import train_supervised

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_cfg = cfg.replace(epochs=3, checkpoint_every_s=0, device=device.type)
    result = train_supervised(run_cfg, segmentation_data(n_train, n_val, cfg.image_size), work / cfg.model)
    counted = result.history[1:]
    train_s = statistics.median(h["train_s"] for h in counted)
    eval_s = statistics.median(h["epoch_s"] - h["train_s"] for h in counted)
    last = work / cfg.model / "checkpoints" / "last.pt"
    copy_started = time.perf_counter()
    shutil.copyfile(last, work / f"{cfg.model}-copy.pt")  # what Tune's persist does with local storage
    copy_s = time.perf_counter() - copy_started
    return {
        "model": cfg.model, "train_images_per_s": n_train / train_s, "eval_images_per_s": n_val / max(eval_s, 1e-9),
        "checkpoint_s": statistics.median(h["checkpoint_s"] for h in counted), "checkpoint_copy_s": copy_s,
        "checkpoint_bytes": int(counted[-1]["checkpoint_bytes"]),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def measure_proposed(cfg: RunConfig, n_source: int, n_target: int, n_val: int, work: Path) -> dict:
    """One proposed-method epoch (two epochs, the first not counted) at full label fraction, so
    the supervised step includes the labelled-target term; and its validation pass."""
    from models.registry import build_segmenter, read_segmenter_checkpoint
    from sweep.engine.checkpoints import network_checkpoint, save_atomic
    from sweep.engine.data import PER_IMAGE_STANDARDISATION
    from sweep.engine.transfer import ProposedRun, validation_jaccard
    from sweep.engine.transfer_data import TransferData
    from sweep.engine.translation import build_translator_from_config, save_translator

    rng = np.random.default_rng(1)
    source, source_masks = synthetic_images(n_source, cfg.image_size, rng)
    target, target_masks = synthetic_images(n_target, cfg.image_size, rng)
    val, val_masks = synthetic_images(n_val, cfg.image_size, rng)
    data = TransferData(task="lungs", source_train_images=source, source_train_masks=source_masks,
                        source_val_images=val, source_val_masks=val_masks, target_train_images=target,
                        target_labelled_images=target, target_labelled_masks=target_masks, target_val_images=val,
                        target_val_masks=val_masks, target_test_images=val[:2], target_test_masks=val_masks[:2],
                        target_test_ids=["t0", "t1"], label_fraction=100.0)
    kwargs = {"width": cfg.width, "in_channels": 1, "num_classes": 2}
    m_a = save_atomic(network_checkpoint(build_segmenter("unet", **kwargs), "unet", kwargs, cfg.to_dict(), "lungs",
                                         cfg.image_size, PER_IMAGE_STANDARDISATION, 0), work / "m_a.pt")
    translator = save_translator(work / "translator.pt", build_translator_from_config(cfg), cfg, "bench", [])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = ProposedRun(cfg.replace(device=device), data, work / "proposed", read_segmenter_checkpoint(m_a), translator)
    run.train_epoch()
    sync(run.device)
    started = time.perf_counter()
    losses = run.train_epoch()
    sync(run.device)
    epoch_s = time.perf_counter() - started
    steps = math.ceil(max(n_source, n_target) / cfg.batch_size)
    started = time.perf_counter()
    validation_jaccard(data, run.model, run.device)
    val_s = time.perf_counter() - started
    written = run.clock.write(run._last_state, run.last_path)  # the run's last.pt: both networks + optimisers
    started = time.perf_counter()
    shutil.copyfile(run.last_path, work / "proposed-copy.pt")
    return {"steps_per_epoch": steps, "epoch_s": epoch_s, "step_s": epoch_s / steps,
            "images_per_s": steps * cfg.batch_size / epoch_s,
            "D_s": losses["D_s"] / steps, "G_s": losses["G_s"] / steps, "S_s": losses["S_s"] / steps,
            "val_images_per_s": n_val / val_s, "checkpoint_s": written["checkpoint_s"],
            "checkpoint_bytes": written["checkpoint_bytes"], "checkpoint_copy_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# (b) packing through Ray


def measure_packing(profiles: list[str], reduced: bool, seconds: dict[str, float], deadline: float = math.inf,
                    n_images: int = 16) -> dict:
    """Aggregate U-Net training images/s with K of eight Ray actors training at once on the GPU
    (epochs of `n_images`, short, so that every trial stops close to the end of the window)."""
    import ray

    gpus = torch.cuda.device_count()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_gpus=gpus)
    cpus = ray.cluster_resources().get("CPU", 1)
    most = max(PACKINGS)

    @ray.remote(num_gpus=(1 / most) if gpus else 0, num_cpus=min(1.0, cpus / most))
    class PackedTrial:
        """One trial's engine loop on synthetic data, trained for a given number of seconds."""

        def setup(self, cfg_dict: dict, n_images: int) -> None:
            from sweep.engine.supervised import _Trainer

            torch.set_num_threads(1)
            cfg = RunConfig.from_dict(cfg_dict)
            data = segmentation_data(n_images, 4, cfg.image_size)
            self.trainer = _Trainer(cfg, data, Path(tempfile.mkdtemp()))
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.trainer.train_epoch()  # cuDNN autotuning, allocator warm-up
            self.images = n_images

        def train_for(self, start_at: float, seconds: float) -> dict:
            """Train whole (short) epochs from the wall-clock time `start_at`, which every packed
            trial shares, until `seconds` have passed."""
            time.sleep(max(0.0, start_at - time.time()))
            images = 0
            while time.time() < start_at + seconds:
                self.trainer.train_epoch()  # reads its loss: one sync per epoch
                images += self.images
            gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            return {"images_per_s": images / (time.time() - start_at), "gpu_peak_mb": gpu_mb,
                    "host_rss_mb": peak_rss_mb()}

    actors = [PackedTrial.remote() for _ in range(most)]
    out: dict[str, dict] = {}
    try:
        for profile in profiles:
            if time.time() + len(PACKINGS) * (seconds[profile] + 2) + 20 > deadline:
                say(f"  {profile}: not measured (out of the --budget-s time)")
                continue
            cfg = bench_config(profile, reduced, model="unet",
                               device="cuda" if gpus else "cpu").replace(num_threads=1)
            ray.get([a.setup.remote(cfg.to_dict(), n_images) for a in actors])
            rows = []
            for k in PACKINGS:
                start_at = time.time() + 1.0  # every call dispatched before the window opens
                results = ray.get([a.train_for.remote(start_at, seconds[profile]) for a in actors[:k]])
                aggregate = sum(r["images_per_s"] for r in results)
                rows.append({"trials": k, "aggregate_images_per_s": aggregate, "per_trial_images_per_s": aggregate / k,
                             "gpu_peak_mb": max((r["gpu_peak_mb"] or 0) for r in results) or None,
                             "host_rss_mb": max(r["host_rss_mb"] for r in results)})
                say(f"  {profile:6s} {k} trial(s): {aggregate:9.1f} images/s together, {aggregate / k:8.1f} each "
                    f"(x{aggregate / rows[0]['aggregate_images_per_s']:.2f} vs one)"
                    + (f"; GPU allocator peak {rows[-1]['gpu_peak_mb']:.0f} MB" if rows[-1]["gpu_peak_mb"] else "")
                    + f"; host RSS {rows[-1]['host_rss_mb']:.0f} MB per trial")
            best = max(r["aggregate_images_per_s"] for r in rows)
            # The fewest trials within 5 % of the best: more would add memory and contention for little.
            chosen = min(r["trials"] for r in rows if r["aggregate_images_per_s"] >= 0.95 * best)
            out[profile] = {"rows": rows, "recommended_trials": chosen}
            say(f"  {profile}: recommended --gpus-per-trial {1 / chosen:g} ({chosen} per GPU; "
                f"sweep.config.GPUS_PER_TRIAL has {GPUS_PER_TRIAL[profile]:g})")
    finally:
        for actor in actors:
            ray.kill(actor)
    return out


# ---------------------------------------------------------------------------------------------
# (c) and (d): checkpoint share and the paper grid's wall time


def checkpoints_of(train_s: float, every_s: float) -> int:
    """Checkpoints a trial of `train_s` seconds writes: one per `every_s` seconds and one at the end."""
    return (int(train_s // every_s) if every_s > 0 else 0) + 1


def trial_seconds(spec, rates: dict, proposed: dict, sizes: dict, efficiency: float, every_s: float,
                  overhead_s: float) -> tuple[float, float]:
    """(seconds, of which checkpoints) for one trial of the paper grid, packed at `efficiency`."""
    from sweep.grid import QUALITATIVE, SEGMENTATION, TRANSLATOR_WARMUP

    cfg = spec.config
    unet = rates["unet"]
    checkpoint = 0.0
    if spec.kind == SEGMENTATION or cfg.method in ("finetune", "scratch"):
        if spec.kind == SEGMENTATION:
            rate, n_train, n_val, n_test, epochs = rates[cfg.model], sizes["jsrt_train"], sizes["jsrt_val"], \
                sizes["jsrt_test"], cfg.epochs
        else:  # the labelled target images, repeated up to the target training split
            rate, n_train, n_val, n_test = unet, sizes["target_train"], sizes["target_val"], sizes["target_test"]
            epochs = cfg.transfer_epochs if cfg.method == "finetune" else cfg.epochs
        train = epochs * (n_train / rate["train_images_per_s"] + n_val / rate["eval_images_per_s"]) / efficiency
        checkpoint = checkpoints_of(train, every_s) * (rate["checkpoint_s"] + rate["checkpoint_copy_s"])
        test = n_test / rate["eval_images_per_s"]
        return train + test + checkpoint + overhead_s, checkpoint
    steps = math.ceil(max(sizes["jsrt_train"], sizes["target_train"]) / cfg.batch_size)
    if spec.kind == TRANSLATOR_WARMUP:
        return cfg.warmup_epochs * steps * (proposed["D_s"] + proposed["G_s"]) / efficiency + overhead_s, 0.0
    if cfg.method == "proposed" or spec.kind == QUALITATIVE:
        n_val = sizes["target_val"] if (cfg.label_fraction or 0) > 0 else sizes["jsrt_val"]
        train = cfg.transfer_epochs * (steps * proposed["step_s"] + n_val / proposed["val_images_per_s"]) / efficiency
        checkpoint = checkpoints_of(train, every_s) * (proposed["checkpoint_s"] + proposed["checkpoint_copy_s"])
        return train + checkpoint + overhead_s, checkpoint
    # source_only: M_A evaluated on the validation and test splits, nothing trained.
    return (sizes["jsrt_val"] + sizes["target_test"]) / unet["eval_images_per_s"] + overhead_s, 0.0


def makespan(specs, seconds: dict[str, float], slots: int) -> float:
    """Wall time of `specs` on `slots` trial slots, released as the sweep releases them."""
    from sweep.scheduling import DependencyQueue

    queue = DependencyQueue(specs)
    running: list[tuple[float, str]] = []
    now = 0.0
    while not queue.exhausted:
        while len(running) < slots and (spec := queue.pop_ready()) is not None:
            heapq.heappush(running, (now + seconds[spec.trial_id], spec.trial_id))
        if not running:
            break
        now, trial_id = heapq.heappop(running)
        queue.finish(trial_id)
    return now


def print_checkpoint_share(figures: dict, paper: RunConfig, sizes: dict, unet: dict, every_s: float) -> None:
    """(c): a paper U-Net trial's checkpoint seconds against its training seconds."""
    say(f"\n(c) checkpoints (last.pt {unet['checkpoint_bytes'] / 1e6:.0f} MB: written in "
        f"{unet['checkpoint_s']:.2f} s, copied to local storage in {unet['checkpoint_copy_s']:.2f} s)")
    trial_train = paper.epochs * (sizes["jsrt_train"] / unet["train_images_per_s"]
                                  + sizes["jsrt_val"] / unet["eval_images_per_s"])
    one = unet["checkpoint_s"] + unet["checkpoint_copy_s"]
    bounded = checkpoints_of(trial_train, every_s) * one
    # Before: last.pt every epoch, best.pt (a third of it) on improvements, the whole run folder copied.
    per_epoch = paper.epochs * one * 4 / 3
    figures["checkpoints"] = {"trial_train_s": trial_train, "every_s": every_s, "bounded_s": bounded,
                              "bounded_fraction": bounded / trial_train, "per_epoch_s": per_epoch,
                              "per_epoch_fraction": per_epoch / trial_train}
    say(f"  paper U-Net trial ({paper.epochs} epochs, one trial alone): {fmt(trial_train)} of training; checkpoints "
        f"every {every_s:g} s + at the end: {checkpoints_of(trial_train, every_s)} x {one:.2f} s = "
        f"{bounded / trial_train:.1%} of it; every epoch (before): ~{per_epoch / trial_train:.0%}")


def fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="paper,cpu,smoke", help="profiles whose packing is measured in (b)")
    parser.add_argument("--packing-seconds", type=float, default=None,
                        help="timed window per packing (default 10 s for paper, 3 s for the others on a GPU; 2 s on a CPU)")
    parser.add_argument("--gpus", default="1,2,4,8", help="GPU counts of the projection (d)")
    parser.add_argument("--trial-overhead-s", type=float, default=3.0,
                        help="per-trial cost outside the engine in (d): actor hand-over, data, dependencies (default 3)")
    parser.add_argument("--skip", default="", help="parts to leave out, e.g. b")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop measuring packings when this many seconds of the whole run are spent, "
                             "so that (d) is still printed (default: no limit)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args()
    deadline = time.time() + args.budget_s if args.budget_s else math.inf
    gpu = torch.cuda.is_available()
    reduced = not gpu
    if reduced:
        torch.set_num_threads(1)  # as each trial runs (num_threads=1); two spinning threads on shared cores crawl
    figures: dict = {"device": torch.cuda.get_device_name() if gpu else "cpu", "reduced": reduced}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1, default=str) + "\n")

    paper = bench_config("paper", reduced)
    sizes = split_sizes(paper.seed)
    n_train, n_val = (REDUCED_IMAGES, REDUCED_IMAGES // 2) if reduced else (sizes["jsrt_train"], sizes["jsrt_val"])
    if gpu:
        say(f"device: {figures['device']} (torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)); "
            f"full size: {paper.image_size} px, width {paper.width:g}, batch {paper.batch_size}, {n_train} training images")
    else:
        say(f"no GPU: reduced size on the CPU ({torch.get_num_threads()} thread(s), {os.cpu_count()} cores): "
            f"{paper.image_size} px, width {paper.width:g}, translator width {paper.translator_width}, {n_train} training "
            "images; the figures describe this CPU, not a GPU")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        say("\n(a) one trial")
        rates: dict[str, dict] = {}
        for model in ("unet", "fcn", "segnet"):
            try:
                rates[model] = measure_segmenter(paper.replace(model=model), n_train, n_val, work)
            except Exception as exc:  # keep the other figures
                say(f"  {model}: failed ({type(exc).__name__}: {exc})")
                continue
            r = rates[model]
            say(f"  {model:6s} trial: {r['train_images_per_s']:8.1f} training images/s, {r['eval_images_per_s']:8.1f} "
                f"evaluation images/s" + (f"; GPU allocator peak {r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] else ""))
        figures["trial"] = rates
        save()
        try:
            source_n, target_n = (n_train, n_train // 2) if reduced else (sizes["jsrt_train"], sizes["target_train"])
            proposed = measure_proposed(paper.replace(experiment="transfer", method="proposed", label_fraction=100.0),
                                        source_n, target_n, n_val, work)
            figures["proposed"] = proposed
            say(f"  proposed transfer step: {proposed['step_s'] * 1000:.1f} ms per step of {paper.batch_size} source + "
                f"{paper.batch_size} target images ({proposed['images_per_s']:.1f} source images/s; D "
                f"{proposed['D_s'] * 1000:.1f} ms, G {proposed['G_s'] * 1000:.1f} ms, S {proposed['S_s'] * 1000:.1f} ms); "
                f"{proposed['steps_per_epoch']} steps per epoch")
        except Exception as exc:
            proposed = None
            say(f"  proposed transfer step: failed ({type(exc).__name__}: {exc})")
        save()

    every_s = RunConfig.checkpoint_every_s
    complete = "unet" in rates and proposed is not None
    if complete:
        print_checkpoint_share(figures, paper, sizes, rates["unet"], every_s)
    else:
        say("\n(c), (d): need the U-Net and proposed figures of (a); not computed")
    save()

    say("\n(b) trials packed on one GPU through Ray" + ("" if gpu else " (CPU: says nothing about a GPU)"))
    packing: dict = {}
    if "b" not in args.skip:
        profiles = [p for p in args.profiles.split(",") if p]
        default_window = {p: (10.0 if p == "paper" else 3.0) if gpu else 2.0 for p in profiles}
        windows = {p: args.packing_seconds or default_window[p] for p in profiles}
        try:
            packing = measure_packing(profiles, reduced, windows, deadline)
        except Exception as exc:
            say(f"  failed ({type(exc).__name__}: {exc})")
    figures["packing"] = packing
    save()

    if not complete:
        return 1
    from sweep.grid import build_grid

    grid = build_grid("all", paper)
    specs = grid.runnable()
    say(f"\n(d) the paper grid: {len(specs)} trials (Table I, Table II, Fig. 9, warm-ups); "
        f"{len(grid.not_applicable())} cells not applicable" + (" [CPU, reduced size]" if reduced else ""))
    packed = (packing.get("paper") or {}).get("rows") or [{"trials": 1, "aggregate_images_per_s": 1.0}]
    single = packed[0]["aggregate_images_per_s"]
    projections = {}
    for row in packed:
        k = row["trials"]
        efficiency = row["aggregate_images_per_s"] / (k * single)
        seconds, checkpoint_total = {}, 0.0
        for spec in specs:
            seconds[spec.trial_id], checkpoint = trial_seconds(spec, rates, proposed, sizes, efficiency, every_s,
                                                               args.trial_overhead_s)
            checkpoint_total += checkpoint
        work_s = sum(seconds.values())
        spans = {n: makespan(specs, seconds, n * k) for n in (int(g) for g in args.gpus.split(","))}
        projections[k] = {"trial_seconds_total": work_s, "checkpoint_seconds_total": checkpoint_total, "wall_s": spans}
        say(f"  {k} trial(s) per GPU (each at {efficiency:.0%} of its speed alone): "
            + ", ".join(f"{n} GPU{'s' if n > 1 else ''} {fmt(s)}" for n, s in spans.items())
            + f"; checkpoints {checkpoint_total / work_s:.1%} of trial time")
    figures["projection"] = projections
    fewest = min(int(g) for g in args.gpus.split(","))
    best = min(projections, key=lambda k: projections[k]["wall_s"][fewest])
    say(f"  fastest on {fewest} GPU(s): {best} trial(s) per GPU, {fmt(projections[best]['wall_s'][fewest])}"
        + (" (goal: at most 1:00:00 on one H100-class GPU)" if gpu else "")
        + ("" if packed[1:] else " (no packing measured: one trial per GPU)"))
    say(f"  assumptions: {args.trial_overhead_s:g} s per trial outside the engine; transfer trials pack as well as "
        "U-Net trials; a partly filled GPU runs no faster")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
