"""What a grid costs on a GPU: the cost model of one trial (seconds from measured rates), the
figures measured on an NVIDIA H200, and the projection of a grid's GPU-hours that `cxrsweep run
--dry-run` prints. No torch, no Ray: a dry run imports it.

benchmarks/bench_gpu.py measures the rates (its parts (a)-(c)) and projects the paper grid's wall
time with this model and the sweep's own release order; `H200` is what it measured on one H200,
with the figures it did not record stated as assumptions (`H200["assumed"]`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from data_io.splits import cv_split, transfer_split
from protocol.config import RunConfig, make_config
from protocol.grid import (
    METHODS_NEEDING_TRANSLATOR,
    QUALITATIVE,
    SEGMENTATION,
    TRANSLATOR_WARMUP,
    TrialSpec,
    dependency_layers,
)

# The paper's sets as distributed: JSRT (Table I, source) and Montgomery (Table II target).
PAPER_CASES = {"jsrt": 247, "montgomery": 138}
# U-Net-like trials (Table I, finetune, scratch, self-training, source_only) and the ones that
# train a translator (warm-ups, proposed, the Fig. 9 runs): each kind packs on a GPU its own way.
PACKING_KINDS = ("unet", "proposed")
TRIAL_OVERHEAD_S = 3.0  # a trial's cost outside the engine: actor hand-over, data, dependencies

# Measured on one NVIDIA H200 (torch 2.11 + CUDA 13.0, benchmarks/gpu_check_short.sh:
# bench_gpu.py at the paper profile, 256 px, batch 4); ranges are given as their middle.
H200: dict[str, Any] = {
    "device": "NVIDIA H200",
    "profile": "paper",
    "rates": {
        # training and evaluation images/s of one trial alone; checkpoint_s: last.pt (497 MB)
        # written and persisted, together about 1 s.
        "unet": {"train_images_per_s": 396.5, "eval_images_per_s": 2600.0, "checkpoint_s": 1.0,
                 "checkpoint_copy_s": 0.0},
        "fcn": {"train_images_per_s": 564.5, "eval_images_per_s": 2600.0, "checkpoint_s": 1.0,
                "checkpoint_copy_s": 0.0},
        "segnet": {"train_images_per_s": 342.5, "eval_images_per_s": 2600.0, "checkpoint_s": 1.0,
                   "checkpoint_copy_s": 0.0},
    },
    # One proposed step (4 source + 4 target images, discriminative + generative + supervised): 76-83 ms.
    "proposed": {"step_s": 0.0795, "D_s": 0.0297, "G_s": 0.0296, "S_s": 0.0202, "val_images_per_s": 867.0,
                 "checkpoint_s": 2.0, "checkpoint_copy_s": 0.0},
    # Aggregate images/s of K trials on one GPU over one trial's (U-Net x1.56, proposed x1.41 at two;
    # four gave no more than two).
    "packing": {"unet": {1: 1.0, 2: 1.56, 4: 1.56}, "proposed": {1: 1.0, 2: 1.41, 4: 1.41}},
    "assumed": [
        "FCN and SegNet evaluate and checkpoint as fast as the U-Net (only their training rates were recorded)",
        "the proposed step splits into D + G (a translator warm-up's step) and S, a U-Net step on its 8 images",
        "proposed validation runs at a third of the U-Net's evaluation rate (two translations and the segmenter)",
        "a proposed last.pt (segmenter, translator, three optimisers) takes 2 s",
        "more trials per GPU than measured run no faster together than the most measured",
        "every training recipe costs what the default one (robust) cost when measured",
    ],
}


def split_sizes(seed: int = 0, cases: Mapping[str, int] = PAPER_CASES) -> dict[str, int]:
    """Images per split of the paper's sets at fold / repetition 0 (data_io.splits)."""
    jsrt = cv_split(cases["jsrt"], 0, seed=seed)
    target = transfer_split(cases["montgomery"], 0, seed=seed)
    return {"jsrt_train": len(jsrt.train), "jsrt_val": len(jsrt.val), "jsrt_test": len(jsrt.test),
            "target_train": len(target.train), "target_val": len(target.val), "target_test": len(target.test)}


def checkpoints_of(train_s: float, every_s: float) -> int:
    """Checkpoints a trial of `train_s` seconds writes: one per `every_s` seconds and one at the end."""
    return (int(train_s // every_s) if every_s > 0 else 0) + 1


def packing_kind(spec: TrialSpec) -> str:
    """Whose packing measurement a trial of the grid follows: the trials that train a translator
    (warm-ups, the methods of protocol.grid.METHODS_NEEDING_TRANSLATOR, the Fig. 9 runs) the
    proposed one, everything else (a segmenter trained or applied) the U-Net's."""
    translates = spec.kind in (TRANSLATOR_WARMUP, QUALITATIVE) or spec.config.method in METHODS_NEEDING_TRANSLATOR
    return "proposed" if translates else "unet"


def trial_seconds(spec: TrialSpec, rates: dict, proposed: dict, sizes: dict, efficiency: dict[str, float],
                  every_s: float, overhead_s: float) -> tuple[float, float]:
    """(seconds, of which checkpoints) for one trial of the paper grid, its kind packed at
    `efficiency[kind]`; its epochs are the grid's (protocol.grid.TrialSpec.training_epochs)."""
    cfg, epochs = spec.config, spec.training_epochs
    unet = rates["unet"]
    packed = efficiency[packing_kind(spec)]
    steps = math.ceil(max(sizes["jsrt_train"], sizes["target_train"]) / cfg.batch_size)
    compile_s = proposed.get("trial_compile_s", 0.0)
    if spec.kind == TRANSLATOR_WARMUP:
        return epochs * steps * (proposed["D_s"] + proposed["G_s"]) / packed + overhead_s + compile_s, 0.0
    if packing_kind(spec) == "proposed":  # proposed cells and the Fig. 9 runs
        n_val = sizes["target_val"] if (cfg.label_fraction or 0) > 0 else sizes["jsrt_val"]
        train = epochs * (steps * proposed["step_s"] + n_val / proposed["val_images_per_s"]) / packed
        checkpoint = checkpoints_of(train, every_s) * (proposed["checkpoint_s"] + proposed["checkpoint_copy_s"])
        return train + checkpoint + overhead_s + compile_s, checkpoint
    if epochs == 0:  # source_only: M_A evaluated on the validation and test splits, nothing trained
        return (sizes["jsrt_val"] + sizes["target_test"]) / unet["eval_images_per_s"] + overhead_s, 0.0
    rate, n_test, extra = unet, sizes["target_test"], 0.0
    n_val = sizes["target_val"] if (cfg.label_fraction or 0) > 0 else sizes["jsrt_val"]
    if spec.kind == SEGMENTATION:
        rate, n_train, n_val, n_test = rates[cfg.model], sizes["jsrt_train"], sizes["jsrt_val"], sizes["jsrt_test"]
    elif cfg.method == "self_training":
        # The student on the source training images and (at most) every target training image,
        # pseudo-labelled or labelled; the teacher labels the target training images once.
        n_train = sizes["jsrt_train"] + sizes["target_train"]
        extra = sizes["target_train"] / unet["eval_images_per_s"]
    else:  # finetune, scratch: the labelled target images, repeated up to the target training split
        n_train, n_val = sizes["target_train"], sizes["target_val"]
    train = epochs * (n_train / rate["train_images_per_s"] + n_val / rate["eval_images_per_s"]) / packed
    checkpoint = checkpoints_of(train, every_s) * (rate["checkpoint_s"] + rate["checkpoint_copy_s"])
    test = n_test / rate["eval_images_per_s"]
    return train + test + extra + checkpoint + overhead_s + rate.get("trial_compile_s", 0.0), checkpoint


def trials_per_gpu(gpus_per_trial: float) -> int:
    """How many trials share one GPU at this share (a whole number of GPUs or more: one)."""
    return max(1, math.floor(1 / gpus_per_trial + 1e-9)) if gpus_per_trial > 0 else 1


def packed_efficiency(packing: Mapping[str, Mapping[int, float]], per_gpu: int) -> dict[str, float]:
    """Each kind's speed, as a share of its speed alone, when `per_gpu` trials share a GPU: the
    aggregate of the most trials measured up to `per_gpu` (more run no faster together) over `per_gpu`."""
    return {kind: max((speedup for k, speedup in measured.items() if k <= per_gpu), default=1.0) / per_gpu
            for kind, measured in packing.items()}


# The config fields a step's seconds depend on (the epochs are the model's own input): what the
# figures were measured at must be what they price.
COST_FIELDS = ("image_size", "width", "batch_size", "translator", "translator_width", "style_dim", "compile")


def figures_do_not_fit(configs: Iterable[RunConfig], figures: Mapping[str, Any] = H200) -> str | None:
    """Why `figures` (measured at one profile's scale) cannot price these configs, or None: a
    trial's COST_FIELDS differ from that profile's."""
    measured = make_config(figures["profile"])
    for cfg in configs:
        differ = [f"{name} {getattr(cfg, name)}" for name in COST_FIELDS
                  if getattr(cfg, name) != getattr(measured, name)]
        if differ:
            return (f"the {figures['device']} figures were measured at the {figures['profile']} profile's scale; "
                    f"these trials have {', '.join(differ)}")
    return None


@dataclass
class Projection:
    """A grid's projected cost on GPUs like the figures' own: each trial's seconds at its packing
    (`seconds`), its GPU-seconds (those seconds times its GPU share), and the longest chain of
    dependent trials, which no number of GPUs shortens."""

    gpus_per_trial: float
    per_gpu: int  # trials sharing one GPU
    efficiency: dict[str, float]  # each packing kind's speed at per_gpu, as a share of its speed alone
    seconds: dict[str, float] = field(default_factory=dict)
    longest_chain_s: float = 0.0

    def gpu_hours(self, trial_ids: Iterable[str] | None = None) -> float:
        share = self.gpus_per_trial if self.gpus_per_trial > 0 else 1.0
        ids = self.seconds if trial_ids is None else trial_ids
        return sum(self.seconds[t] for t in ids) * share / 3600

    def wall_hours_at_least(self, gpus: int) -> float:
        """A lower bound of the wall time on `gpus` GPUs: the work spread evenly, or the longest chain."""
        return max(self.gpu_hours() / gpus, self.longest_chain_s / 3600)


def project(specs: Sequence[TrialSpec], gpus_per_trial: float, figures: Mapping[str, Any] = H200,
            every_s: float | None = None, overhead_s: float = TRIAL_OVERHEAD_S) -> Projection:
    """The GPU-hours of `specs` (runnable trials) with `figures`' rates, each trial sharing a GPU
    as `gpus_per_trial` says (bench_gpu.py projects the wall time with the sweep's release order).
    `every_s`: the checkpoint interval (default: each trial's checkpoint_every_s)."""
    per_gpu = trials_per_gpu(gpus_per_trial)
    efficiency = packed_efficiency(figures["packing"], per_gpu)
    sizes = split_sizes()
    projection = Projection(gpus_per_trial, per_gpu, efficiency)
    for spec in specs:
        every = spec.config.checkpoint_every_s if every_s is None else every_s
        projection.seconds[spec.trial_id], _ = trial_seconds(spec, figures["rates"], figures["proposed"], sizes,
                                                             efficiency, every, overhead_s)
    projection.longest_chain_s = longest_chain(specs, projection.seconds)
    return projection


def longest_chain(specs: Sequence[TrialSpec], seconds: Mapping[str, float]) -> float:
    """The seconds of the longest chain of trials each waiting for the one before it."""
    by_id = {s.trial_id: s for s in specs}
    layers = dependency_layers({t: [d for d in s.depends_on if d in by_id] for t, s in by_id.items()})
    finish: dict[str, float] = {}
    for layer in layers:
        for trial_id in layer:
            start = max((finish[d] for d in by_id[trial_id].depends_on if d in finish), default=0.0)
            finish[trial_id] = start + seconds[trial_id]
    return max(finish.values(), default=0.0)
