"""The paper-scale sweep on one GPU: what a trial costs, whether packing trials pays, what the
checkpoints cost, and how long the whole paper grid would take. Prints its parts as they are
measured, in the order (a), (c), (b), (d), then (a') and (d') (a timeout still leaves the earlier
figures; `--budget-s` stops (b) and (a') early so that (d) and (d') are printed):

(a) training and evaluation images/s of one `paper` trial of each segmenter (256 px, batch 4;
    U-Net first) and the time of one proposed-method transfer step (discriminative, generative
    and supervised) and of its validation pass, measured with the engines' own code on
    synthetic arrays of the real set sizes;
(b) aggregate images/s with 1, 2, 4 and 8 trials packed on one GPU through Ray, for U-Net
    trials of each profile in `--profiles` and for proposed transfer trials (`--packing-kinds`):
    eight actors share the GPU, K of them run the same number of whole epochs (training and
    validation) from the same instant, and the aggregate is their images over the time the
    last one took; the packing it recommends (`--gpus-per-trial`, protocol.config.GPUS_PER_TRIAL);
(c) checkpoint seconds as a fraction of a trial's training time, at the default interval
    (`checkpoint_every_s`) and as if every epoch were checkpointed (the old policy);
(d) the projected wall time of the whole paper grid (Table I + Table II + Fig. 9, 150 epochs)
    on N such GPUs: every trial of `protocol.grid.build_grid("all", paper)` gets a duration from
    (a)-(c) and the epochs the grid says it trains (`TrialSpec.training_epochs`), slowed by the
    packing measured in (b) for its kind (U-Net-like trials by the U-Net packing, proposed trials
    and warm-ups by the proposed packing), and the list is scheduled the way the sweep releases
    trials (sweep.scheduling);
(a') the U-Net trial and the proposed step with `compile=true` (torch.compile), each in a fresh
    process: steady images/s, and the seconds the first epochs lose to compiling, with an empty
    compile cache and again with the cache the first run filled (what later trials on a node pay);
(d') (d) with the compiled U-Net and proposed figures and each trial paying the warm-cache
    compile seconds.

On a machine without a GPU it runs at reduced size (64 px, narrow networks, fewer images) and
says so: its figures then describe this CPU, not a GPU.

    python benchmarks/bench_gpu.py                        # everything, full size on a GPU
    python benchmarks/bench_gpu.py --json out.json --packing-seconds 10 --profiles paper,cpu
    python benchmarks/bench_gpu.py --profiles paper --packings 1,2,4 --budget-s 150   # a short run
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from protocol.config import GPUS_PER_TRIAL, RunConfig, make_config  # noqa: E402
from protocol.cost import PACKING_KINDS, checkpoints_of, split_sizes, trial_seconds  # noqa: E402
from protocol.durations import format_duration  # noqa: E402

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


def trial_sizes(reduced: bool, sizes: dict[str, int]) -> dict[str, int]:
    """Images of the measured trials: a Table I trial's training and validation splits; a
    proposed trial's source and target training splits and its (target) validation split."""
    if reduced:
        return {"train": REDUCED_IMAGES, "val": REDUCED_IMAGES // 2, "source": REDUCED_IMAGES,
                "target": REDUCED_IMAGES // 2, "target_val": REDUCED_IMAGES // 2}
    return {"train": sizes["jsrt_train"], "val": sizes["jsrt_val"], "source": sizes["jsrt_train"],
            "target": sizes["target_train"], "target_val": sizes["target_val"]}


def synthetic_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random standardised images and random masks: throughput does not depend on content."""
    return rng.standard_normal((n, size, size)).astype(np.float32), (rng.random((n, size, size)) < 0.3).astype(np.uint8)


def segmentation_data(n_train: int, n_val: int, size: int, seed: int = 0):
    from engine.data.segmentation import SegmentationData

    rng = np.random.default_rng(seed)
    train, val, test = (synthetic_images(n, size, rng) for n in (n_train, n_val, 4))
    return SegmentationData(*train, *val, *test, test_ids=[f"bench{i}" for i in range(4)], task="lungs",
                            dataset="synthetic")


def proposed_run(cfg: RunConfig, n_source: int, n_target: int, n_val: int, work: Path):
    """A ProposedRun at full label fraction (so the supervised step includes the labelled-target
    term) on synthetic arrays, with a random M_A and translator written to `work`."""
    from engine.data.segmentation import PER_IMAGE_STANDARDISATION
    from engine.data.transfer import TransferData
    from engine.evaluation.label_budget import label_plan
    from engine.runtime.checkpoints import network_checkpoint, save_atomic
    from engine.transfer.proposed.gan import build_translator_from_config
    from engine.transfer.proposed.run import ProposedRun
    from engine.transfer.proposed.warmup import save_translator
    from models.registry import build_segmenter, read_segmenter_checkpoint

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
    cfg = cfg.replace(device=device)
    return ProposedRun(cfg, data, label_plan(cfg, data), work / "proposed", read_segmenter_checkpoint(m_a),
                       translator)


def proposed_config(paper: RunConfig) -> RunConfig:
    return paper.replace(experiment="transfer", method="proposed", label_fraction=100.0)


# ---------------------------------------------------------------------------------------------
# (a) and (a'): one trial


def measure_segmenter(cfg: RunConfig, n_train: int, n_val: int, work: Path, epochs: int = 3, warm: int = 1) -> dict:
    """Train/eval images/s of one trial (`epochs` epochs, the first `warm` not counted: cuDNN
    autotuning, and compiling with cfg.compile), with last.pt written every epoch so its cost can
    be read. `warmup_extra_s`: what the first `warm` epochs took beyond as many steady ones."""
    from engine.supervised import train_supervised

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_cfg = cfg.replace(epochs=epochs, checkpoint_every_s=0, device=device.type)
    run_dir = work / f"{cfg.model}{'-compiled' if cfg.compile else ''}"
    result = train_supervised(run_cfg, segmentation_data(n_train, n_val, cfg.image_size), run_dir)
    counted = result.history[warm:]
    train_s = statistics.median(h["train_s"] for h in counted)
    eval_s = statistics.median(h["epoch_s"] - h["train_s"] for h in counted)
    steady_s = statistics.median(h["epoch_s"] for h in counted)
    last = run_dir / "checkpoints" / "last.pt"
    copy_started = time.perf_counter()
    shutil.copyfile(last, work / f"{cfg.model}-copy.pt")  # what Tune's persist does with local storage
    copy_s = time.perf_counter() - copy_started
    return {
        "model": cfg.model, "compile": cfg.compile, "train_images_per_s": n_train / train_s,
        "eval_images_per_s": n_val / max(eval_s, 1e-9),
        "warmup_extra_s": sum(h["epoch_s"] for h in result.history[:warm]) - warm * steady_s,
        "checkpoint_s": statistics.median(h["checkpoint_s"] for h in counted), "checkpoint_copy_s": copy_s,
        "checkpoint_bytes": int(counted[-1]["checkpoint_bytes"]),
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def measure_proposed(cfg: RunConfig, n_source: int, n_target: int, n_val: int, work: Path) -> dict:
    """One proposed-method epoch (two epochs, the first not counted) and its validation pass
    (two passes, the first not counted); `warmup_extra_s` is what the first ones took beyond."""
    run = proposed_run(cfg, n_source, n_target, n_val, work)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def timed(function):
        sync(run.device)
        started = time.perf_counter()
        out = function()
        sync(run.device)
        return time.perf_counter() - started, out

    first_epoch_s, _ = timed(run.train_epoch)
    epoch_s, losses = timed(run.train_epoch)
    first_val_s, _ = timed(lambda: run.validate(run.model))  # the run's own validation pass
    val_s, _ = timed(lambda: run.validate(run.model))
    steps = math.ceil(max(n_source, n_target) / cfg.batch_size)
    written = run.clock.write(run._last_state, run.last_path)  # the run's last.pt: both networks + optimisers
    started = time.perf_counter()
    shutil.copyfile(run.last_path, work / "proposed-copy.pt")
    return {"compile": cfg.compile, "steps_per_epoch": steps, "epoch_s": epoch_s, "step_s": epoch_s / steps,
            "images_per_s": steps * cfg.batch_size / epoch_s,
            "D_s": losses["D_s"] / steps, "G_s": losses["G_s"] / steps, "S_s": losses["S_s"] / steps,
            "val_images_per_s": n_val / val_s, "warmup_extra_s": first_epoch_s - epoch_s + first_val_s - val_s,
            "checkpoint_s": written["checkpoint_s"], "checkpoint_bytes": written["checkpoint_bytes"],
            "checkpoint_copy_s": time.perf_counter() - started,
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if run.device.type == "cuda" else None}


def describe_segmenter(r: dict) -> str:
    return (f"{r['train_images_per_s']:8.1f} training images/s, {r['eval_images_per_s']:8.1f} evaluation images/s"
            + (f"; GPU allocator peak {r['gpu_peak_mb']:.0f} MB" if r["gpu_peak_mb"] else ""))


def describe_proposed(p: dict, batch: int) -> str:
    return (f"{p['step_s'] * 1000:.1f} ms per step of {batch} source + {batch} target images "
            f"({p['images_per_s']:.1f} source images/s; D {p['D_s'] * 1000:.1f} ms, G {p['G_s'] * 1000:.1f} ms, "
            f"S {p['S_s'] * 1000:.1f} ms); {p['steps_per_epoch']} steps per epoch; validation "
            f"{p['val_images_per_s']:.0f} images/s"
            + (f"; GPU allocator peak {p['gpu_peak_mb']:.0f} MB" if p["gpu_peak_mb"] else ""))


def compiled_part(kind: str, reduced: bool, out: Path) -> None:
    """(a') in this (fresh) process: the U-Net trial or the proposed step with compile=true."""
    paper = bench_config("paper", reduced).replace(compile=True)
    trial = trial_sizes(reduced, split_sizes(paper.seed))
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "unet":
            # Four epochs, two not counted: the first compiles training and evaluation, the second
            # may recompile for the epoch's last, smaller batch.
            figures = measure_segmenter(paper.replace(model="unet"), trial["train"], trial["val"], Path(tmp),
                                        epochs=4, warm=2)
        else:
            figures = measure_proposed(proposed_config(paper), trial["source"], trial["target"], trial["target_val"],
                                       Path(tmp))
    out.write_text(json.dumps(figures))


_COMPILING: list[subprocess.Popen] = []  # compiled runs started, stopped with this process


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _stop_compiling_and_exit(signum, frame) -> None:
    """On SIGTERM (a time limit around this script): end the compiled runs' process groups too."""
    for child in _COMPILING:
        _stop(child)
    sys.exit(128 + signum)


def measure_compiled(kind: str, reduced: bool, timeout_s: float, caches: str) -> dict | None:
    """Run `compiled_part` in a fresh process (as a new trial would be) whose compile caches
    (inductor's, Triton's) live in `caches`: its figures and the time it took, or None when it did
    not finish within `timeout_s`."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{caches}/inductor", "TRITON_CACHE_DIR": f"{caches}/triton"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        command = [sys.executable, __file__, "--compiled-part", kind, "--compiled-out", str(out)]
        started = time.perf_counter()
        # Its own process group: a run stopped at its time limit takes its compile workers with it.
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env, start_new_session=True)
        _COMPILING.append(child)
        try:
            returncode = child.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            _stop(child)
            say(f"  {kind}: compiled run stopped after {timeout_s:.0f} s (its time limit, --budget-s)")
            return None
        if returncode != 0:
            say(f"  {kind}: compiled run failed (exit {returncode})")
            return None
        figures = json.loads(out.read_text())
        figures["process_s"] = time.perf_counter() - started
        return figures


# ---------------------------------------------------------------------------------------------
# (b) packing through Ray


def measure_packing(jobs: list[tuple[str, str]], reduced: bool, trial: dict[str, int], windows: dict[str, float],
                    packings: tuple[int, ...], deadline: float = math.inf) -> dict:
    """For each (profile, kind) of `jobs`: aggregate images/s with K of max(packings) Ray actors
    running the same number of whole epochs (training and validation) on the GPU from one
    instant; the epochs are chosen so that one trial alone takes about the profile's window."""
    import ray

    gpus = torch.cuda.device_count()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_gpus=gpus)
    cpus = ray.cluster_resources().get("CPU", 1)
    most = max(packings)

    @ray.remote(num_gpus=(1 / most) if gpus else 0, num_cpus=min(1.0, cpus / most))
    class PackedTrial:
        """One trial's engine loop on synthetic data: epochs of training and validation."""

        def setup(self, kind: str, cfg_dict: dict, sizes: dict[str, int]) -> None:
            from engine.supervised import Trainer

            torch.set_num_threads(1)  # as a sweep trial runs (--cpus-per-trial 1)
            cfg = RunConfig.from_dict(cfg_dict)
            work = Path(tempfile.mkdtemp())
            if kind == "unet":
                trainer = Trainer(cfg, segmentation_data(sizes["train"], sizes["val"], cfg.image_size), work)

                def epoch() -> None:
                    trainer.train_epoch()  # reads its loss: one sync per epoch
                    trainer.val_scorer(trainer.model)

                self.images, self.device = sizes["train"], trainer.device
            else:
                run = proposed_run(cfg, sizes["source"], sizes["target"], sizes["target_val"], work)

                def epoch() -> None:
                    run.train_epoch()
                    run.validate(run.model)

                self.images = math.ceil(max(sizes["source"], sizes["target"]) / cfg.batch_size) * cfg.batch_size
                self.device = run.device
            self.epoch = epoch
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            epoch()  # cuDNN autotuning, allocator warm-up

        def run(self, start_at: float, epochs: int) -> dict:
            """`epochs` epochs from the wall-clock time `start_at`, which every packed trial shares."""
            time.sleep(max(0.0, start_at - time.time()))
            for _ in range(epochs):
                self.epoch()
            sync(self.device)
            gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            return {"end": time.time(), "images": epochs * self.images, "gpu_peak_mb": gpu_mb,
                    "host_rss_mb": peak_rss_mb()}

    def together(actors, epochs: int) -> tuple[float, list[dict]]:
        start_at = time.time() + 1.0  # every call dispatched before the window opens
        results = ray.get([a.run.remote(start_at, epochs) for a in actors])
        return sum(r["images"] for r in results) / (max(r["end"] for r in results) - start_at), results

    actors = [PackedTrial.remote() for _ in range(most)]
    out: dict[str, dict] = {}
    try:
        for profile, kind in jobs:
            window = windows[profile]
            expected = sum(packings) / 1.4 * window + 20  # setup, and rounds growing with K
            if time.time() + expected > deadline:
                say(f"  {profile} {kind}: not measured (out of the --budget-s time)")
                continue
            cfg = bench_config(profile, reduced, device="cuda" if gpus else "cpu").replace(num_threads=1)
            cfg = proposed_config(cfg) if kind == "proposed" else cfg.replace(model="unet")
            ray.get([a.setup.remote(kind, cfg.to_dict(), trial) for a in actors])
            one_epoch, _ = together(actors[:1], 1)  # images/s of one epoch alone: sets the epochs per window
            images_per_epoch = trial["train"] if kind == "unet" else \
                math.ceil(max(trial["source"], trial["target"]) / cfg.batch_size) * cfg.batch_size
            epochs = max(1, round(window * one_epoch / images_per_epoch))
            rows = []
            for k in packings:
                aggregate, results = together(actors[:k], epochs)
                rows.append({"trials": k, "epochs": epochs, "aggregate_images_per_s": aggregate,
                             "per_trial_images_per_s": aggregate / k,
                             "gpu_peak_mb": max((r["gpu_peak_mb"] or 0) for r in results) or None,
                             "host_rss_mb": max(r["host_rss_mb"] for r in results)})
                say(f"  {profile:6s} {kind:8s} {k} trial(s): {aggregate:8.1f} images/s together, {aggregate / k:8.1f} "
                    f"each (x{aggregate / rows[0]['aggregate_images_per_s']:.2f} vs one)"
                    + (f"; GPU allocator peak {rows[-1]['gpu_peak_mb']:.0f} MB" if rows[-1]["gpu_peak_mb"] else "")
                    + f"; host RSS {rows[-1]['host_rss_mb']:.0f} MB per trial")
            best = max(r["aggregate_images_per_s"] for r in rows)
            # The fewest trials within 5 % of the best: more would add memory and contention for little.
            chosen = min(r["trials"] for r in rows if r["aggregate_images_per_s"] >= 0.95 * best)
            out.setdefault(profile, {})[kind] = {"rows": rows, "recommended_trials": chosen}
            say(f"  {profile} {kind}: recommended --gpus-per-trial {1 / chosen:g} ({chosen} per GPU of the "
                f"{', '.join(map(str, packings))} measured; protocol.config.GPUS_PER_TRIAL has "
                f"{GPUS_PER_TRIAL[profile]:g}); "
                f"{epochs} epoch(s) of {images_per_epoch} images per trial and round")
    finally:
        for actor in actors:
            ray.kill(actor)
    return out


# ---------------------------------------------------------------------------------------------
# (c) and (d): checkpoint share and the paper grid's wall time (the cost model of one trial:
# protocol/cost.py)


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


def packing_efficiencies(packing: dict) -> tuple[dict[int, dict[str, float]], list[str]]:
    """{K: {kind: aggregate(K) / (K x aggregate(1))}} from the paper profile's packing rows, for
    the K measured for U-Net trials; a kind not measured at some K borrows the U-Net's (said in
    the returned notes). Without any measurement: one trial per GPU at full speed."""
    measured = packing.get("paper") or {}
    efficiency: dict[str, dict[int, float]] = {}
    for kind, figures in measured.items():
        rows = figures["rows"]
        single = rows[0]["aggregate_images_per_s"]
        efficiency[kind] = {row["trials"]: row["aggregate_images_per_s"] / (row["trials"] * single) for row in rows}
    base = efficiency.get("unet") or efficiency.get("proposed") or {1: 1.0}
    notes = []
    out: dict[int, dict[str, float]] = {}
    for k in base:
        out[k] = {}
        for kind in PACKING_KINDS:
            if k in efficiency.get(kind, {}):
                out[k][kind] = efficiency[kind][k]
            else:
                out[k][kind] = base[k]
                notes.append(f"{kind} trials at {k} per GPU pack as {'U-Net' if 'unet' in efficiency else 'proposed'} "
                             "trials (not measured)")
    return out, notes


def project(specs, rates: dict, proposed: dict, sizes: dict, packing: dict, every_s: float, overhead_s: float,
            gpus: list[int]) -> tuple[dict, list[str]]:
    """Wall time of the paper grid on `gpus` GPUs for each measured packing; prints a line each."""
    efficiencies, notes = packing_efficiencies(packing)
    projections = {}
    for k, efficiency in efficiencies.items():
        seconds, checkpoint_total = {}, 0.0
        for spec in specs:
            seconds[spec.trial_id], checkpoint = trial_seconds(spec, rates, proposed, sizes, efficiency, every_s,
                                                               overhead_s)
            checkpoint_total += checkpoint
        work_s = sum(seconds.values())
        spans = {n: makespan(specs, seconds, n * k) for n in gpus}
        projections[k] = {"efficiency": efficiency, "trial_seconds_total": work_s,
                          "checkpoint_seconds_total": checkpoint_total, "wall_s": spans}
        say(f"  {k} trial(s) per GPU (each at {efficiency['unet']:.0%} (U-Net-like) / {efficiency['proposed']:.0%} "
            f"(proposed) of its speed alone): "
            + ", ".join(f"{n} GPU{'s' if n > 1 else ''} {format_duration(s)}" for n, s in spans.items())
            + f"; checkpoints {checkpoint_total / work_s:.1%} of trial time")
    fewest = min(gpus)
    best = min(projections, key=lambda k: projections[k]["wall_s"][fewest])
    say(f"  fastest on {fewest} GPU(s): {best} trial(s) per GPU, {format_duration(projections[best]['wall_s'][fewest])}"
        + (" (goal: at most 1:00:00 on one H100-class GPU)" if torch.cuda.is_available() else "")
        + ("" if len(projections) > 1 else " (no packing measured: one trial per GPU)"))
    return projections, notes


def print_checkpoint_share(figures: dict, paper: RunConfig, sizes: dict, unet: dict, every_s: float) -> None:
    """(c): a paper U-Net trial's checkpoint seconds against its training seconds."""
    from protocol.grid import segmentation_trial

    epochs = segmentation_trial(paper, "unet", "lungs", 0).training_epochs
    say(f"\n(c) checkpoints (last.pt {unet['checkpoint_bytes'] / 1e6:.0f} MB: written in "
        f"{unet['checkpoint_s']:.2f} s, copied to local storage in {unet['checkpoint_copy_s']:.2f} s)")
    trial_train = epochs * (sizes["jsrt_train"] / unet["train_images_per_s"]
                            + sizes["jsrt_val"] / unet["eval_images_per_s"])
    one = unet["checkpoint_s"] + unet["checkpoint_copy_s"]
    bounded = checkpoints_of(trial_train, every_s) * one
    # Before: last.pt every epoch, best.pt (a third of it) on improvements, the whole run folder copied.
    per_epoch = epochs * one * 4 / 3
    figures["checkpoints"] = {"trial_train_s": trial_train, "every_s": every_s, "bounded_s": bounded,
                              "bounded_fraction": bounded / trial_train, "per_epoch_s": per_epoch,
                              "per_epoch_fraction": per_epoch / trial_train}
    say(f"  paper U-Net trial ({epochs} epochs, one trial alone): {format_duration(trial_train)} of training; "
        f"checkpoints every {every_s:g} s + at the end: {checkpoints_of(trial_train, every_s)} x {one:.2f} s = "
        f"{bounded / trial_train:.1%} of it; every epoch (before): ~{per_epoch / trial_train:.0%}")


# ---------------------------------------------------------------------------------------------
# The run: (a), (c), (b), (d), (a'), (d') in turn, each part's figures saved as it ends


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="paper,cpu,smoke", help="profiles whose U-Net packing is measured in (b)")
    parser.add_argument("--packing-kinds", default="unet,proposed",
                        help="trial kinds packed in (b): unet (every profile of --profiles), proposed (paper)")
    parser.add_argument("--packings", default="1,2,4,8", help="trials per GPU measured in (b)")
    parser.add_argument("--packing-seconds", type=float, default=None,
                        help="about how long one trial alone runs per round of (b) (default 6 s for paper, 3 s for "
                             "the others on a GPU; 2 s on a CPU); K packed trials run K times its work")
    parser.add_argument("--gpus", default="1,2,4,8", help="GPU counts of the projection (d)")
    parser.add_argument("--trial-overhead-s", type=float, default=3.0,
                        help="per-trial cost outside the engine in (d): actor hand-over, data, dependencies "
                             "(default 3)")
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated: b, compile")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop measuring packings and compiled runs when this many seconds of the whole run are "
                             "spent, so that (d) and (d') are still printed (default: no limit)")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--compiled-part", choices=("unet", "proposed"), help=argparse.SUPPRESS)
    parser.add_argument("--compiled-out", help=argparse.SUPPRESS)
    return parser


class Bench:
    """One run's settings, its paper-profile config and split sizes, and the figures measured so
    far (written to --json after every part, so that a timeout keeps the earlier ones)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.gpu = torch.cuda.is_available()
        self.reduced = not self.gpu
        self.deadline = time.time() + args.budget_s if args.budget_s else math.inf
        self.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
        self.packings = tuple(int(k) for k in args.packings.split(","))
        self.gpu_counts = [int(g) for g in args.gpus.split(",")]
        self.paper = bench_config("paper", self.reduced)
        self.sizes = split_sizes(self.paper.seed)
        self.trial = trial_sizes(self.reduced, self.sizes)
        self.every_s = RunConfig.checkpoint_every_s
        self.figures: dict = {"device": torch.cuda.get_device_name() if self.gpu else "cpu", "reduced": self.reduced}

    def save(self) -> None:
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.figures, indent=1, default=str) + "\n")

    def say_device(self) -> None:
        paper, trial = self.paper, self.trial
        if self.gpu:
            say(f"device: {self.figures['device']} (torch {torch.__version__}, {torch.cuda.device_count()} GPU(s)); "
                f"full size: {paper.image_size} px, width {paper.width:g}, batch {paper.batch_size}, "
                f"{trial['train']} training images")
        else:
            say(f"no GPU: reduced size on the CPU ({torch.get_num_threads()} thread(s), {os.cpu_count()} cores): "
                f"{paper.image_size} px, width {paper.width:g}, translator width {paper.translator_width}, "
                f"{trial['train']} training images; the figures describe this CPU, not a GPU")


def one_trial(bench: Bench) -> tuple[dict[str, dict], dict | None]:
    """(a): each segmenter's trial rates, and the proposed step's figures (None when it failed)."""
    paper, trial = bench.paper, bench.trial
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        say("\n(a) one trial")
        rates: dict[str, dict] = {}
        for model in ("unet", "fcn", "segnet"):
            try:
                rates[model] = measure_segmenter(paper.replace(model=model), trial["train"], trial["val"], work)
            except Exception as exc:  # keep the other figures
                say(f"  {model}: failed ({type(exc).__name__}: {exc})")
                continue
            say(f"  {model:6s} trial: {describe_segmenter(rates[model])}")
        bench.figures["trial"] = rates
        bench.save()
        try:
            proposed = measure_proposed(proposed_config(paper), trial["source"], trial["target"], trial["target_val"],
                                        work)
            bench.figures["proposed"] = proposed
            say(f"  proposed transfer step: {describe_proposed(proposed, paper.batch_size)}")
        except Exception as exc:
            proposed = None
            say(f"  proposed transfer step: failed ({type(exc).__name__}: {exc})")
        bench.save()
    return rates, proposed


def packed_trials(bench: Bench, rates: dict[str, dict]) -> dict:
    """(b): the packing rows of each (profile, kind) measured, {} when skipped or failed."""
    args, trial = bench.args, bench.trial
    say("\n(b) trials packed on one GPU through Ray" + ("" if bench.gpu else " (CPU: says nothing about a GPU)"))
    packing: dict = {}
    if "b" not in bench.skip:
        kinds = [k for k in args.packing_kinds.split(",") if k]
        profiles = [p for p in args.profiles.split(",") if p]
        jobs = [(p, "unet") for p in profiles if "unet" in kinds]
        jobs += [("paper", "proposed")] if "proposed" in kinds else []
        default_window = {p: (6.0 if p == "paper" else 3.0) if bench.gpu else 2.0 for p, _ in jobs}
        windows = {p: args.packing_seconds or default_window[p] for p, _ in jobs}
        try:
            packing = measure_packing(jobs, bench.reduced, trial, windows, bench.packings, bench.deadline)
        except Exception as exc:
            say(f"  failed ({type(exc).__name__}: {exc})")
        if "unet" in rates and (packing.get("paper") or {}).get("unet"):
            unet = rates["unet"]
            alone = trial["train"] / (trial["train"] / unet["train_images_per_s"]
                                      + trial["val"] / unet["eval_images_per_s"])
            through_ray = packing["paper"]["unet"]["rows"][0]["aggregate_images_per_s"]
            say(f"  one paper U-Net trial through Ray: {through_ray:.1f} images/s (epochs with their validation) = "
                f"{through_ray / alone:.0%} of the {alone:.1f} of (a) alone")
    bench.figures["packing"] = packing
    bench.save()
    return packing


def paper_grid_projection(bench: Bench, rates: dict[str, dict], proposed: dict, packing: dict) -> list:
    """(d): the paper grid's wall time; returns its runnable trials."""
    from protocol.grid import build_grid

    grid = build_grid("all", bench.paper)
    specs = grid.runnable()
    overhead_s = bench.args.trial_overhead_s
    say(f"\n(d) the paper grid: {len(specs)} trials (Table I, Table II, Fig. 9, warm-ups); "
        f"{len(grid.not_applicable())} cells not applicable" + (" [CPU, reduced size]" if bench.reduced else ""))
    bench.figures["projection"], notes = project(specs, rates, proposed, bench.sizes, packing, bench.every_s,
                                                 overhead_s, bench.gpu_counts)
    say(f"  assumptions: {overhead_s:g} s per trial outside the engine; a trial's slowdown depends on how "
        "many trials share its GPU, not on their kind; a partly filled GPU runs no faster"
        + "".join(f"; {note}" for note in dict.fromkeys(notes)))
    bench.save()
    return specs


def describe_compiled(kind: str, result: dict, eager: dict, batch: int) -> str:
    """A compiled run's speed against the eager figures of (a)."""
    if kind == "unet":
        return (f"{describe_segmenter(result)} (eager: "
                f"x{result['train_images_per_s'] / eager['train_images_per_s']:.2f} training, "
                f"x{result['eval_images_per_s'] / eager['eval_images_per_s']:.2f} evaluation)")
    return f"{describe_proposed(result, batch)} (eager: x{eager['step_s'] / result['step_s']:.2f})"


def compiled_runs(bench: Bench, rates: dict[str, dict], proposed: dict) -> dict[str, dict]:
    """(a'): {kind: {"empty cache" | "warm cache": figures}} of the compiled runs that finished."""
    say("\n(a') compile=true, each in a fresh process (compile seconds: what the first epochs took beyond steady "
        "ones)")
    compiled: dict[str, dict] = {}
    # Both kinds with an empty compile cache first, then (time permitting) with the cache warm.
    caches = tempfile.mkdtemp(prefix="bench-gpu-compile-")  # inductor's and Triton's: empty at first
    for label, kind in (("empty cache", "unet"), ("empty cache", "proposed"), ("warm cache", "unet"),
                        ("warm cache", "proposed")):
        remaining = bench.deadline - time.time()
        if remaining < 20 or (label == "warm cache" and kind not in compiled):
            say(f"  {kind} ({label}): not measured ("
                + ("out of the --budget-s time)" if remaining < 20 else "no empty-cache run to warm the cache)"))
            continue
        result = measure_compiled(kind, bench.reduced, remaining - 5, caches)
        if result is None:
            continue
        compiled.setdefault(kind, {})[label] = result
        eager = rates["unet"] if kind == "unet" else proposed
        say(f"  {kind} ({label}): compiling {result['warmup_extra_s']:.1f} s (eager warm-up "
            f"{eager['warmup_extra_s']:.1f} s), process {result['process_s']:.0f} s; "
            f"{describe_compiled(kind, result, eager, bench.paper.batch_size)}")
    shutil.rmtree(caches, ignore_errors=True)
    bench.figures["compiled"] = compiled
    bench.save()
    return compiled


def with_compile(eager: dict, runs: dict) -> dict:
    """A compiled run's figures (warm cache where measured) with the compile seconds a trial pays."""
    run = runs.get("warm cache") or runs["empty cache"]
    return {**run, "trial_compile_s": max(0.0, run["warmup_extra_s"] - eager["warmup_extra_s"])}


def compiled_projection(bench: Bench, specs: list, rates: dict[str, dict], proposed: dict, packing: dict,
                        compiled: dict[str, dict]) -> None:
    """(d'): (d) at the compiled rates, each trial paying its compile seconds."""
    compiled_rates = {**rates, "unet": with_compile(rates["unet"], compiled["unet"])}
    compiled_proposed = with_compile(proposed, compiled["proposed"])
    say(f"\n(d') (d) with compile=true: U-Net-like trials at the compiled U-Net's rates (FCN and SegNet at their "
        f"eager rates: not measured compiled), proposed trials and warm-ups at the compiled step's; each trial "
        f"pays {compiled_rates['unet']['trial_compile_s']:.0f} s (U-Net) / "
        f"{compiled_proposed['trial_compile_s']:.0f} s (proposed) of compiling "
        f"({'warm' if 'warm cache' in compiled['unet'] else 'empty'} cache); packing as measured eager")
    bench.figures["projection_compiled"], _ = project(specs, compiled_rates, compiled_proposed, bench.sizes, packing,
                                                      bench.every_s, bench.args.trial_overhead_s, bench.gpu_counts)
    bench.save()


def main() -> int:
    args = build_parser().parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # as each trial runs (num_threads=1); two spinning threads on shared cores crawl
    if args.compiled_part:  # (a') in a fresh process, started by measure_compiled
        compiled_part(args.compiled_part, not torch.cuda.is_available(), Path(args.compiled_out))
        return 0
    signal.signal(signal.SIGTERM, _stop_compiling_and_exit)
    bench = Bench(args)
    bench.say_device()
    rates, proposed = one_trial(bench)
    complete = "unet" in rates and proposed is not None
    if complete:
        print_checkpoint_share(bench.figures, bench.paper, bench.sizes, rates["unet"], bench.every_s)
    else:
        say("\n(c), (d): need the U-Net and proposed figures of (a); not computed")
    bench.save()
    packing = packed_trials(bench, rates)
    if not complete:
        return 1
    specs = paper_grid_projection(bench, rates, proposed, packing)
    if "compile" in bench.skip:
        return 0
    compiled = compiled_runs(bench, rates, proposed)
    if {"unet", "proposed"} <= set(compiled):
        compiled_projection(bench, specs, rates, proposed, packing, compiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
