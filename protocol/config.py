"""Run configuration and profiles.

A `RunConfig` is a flat dataclass so that every field can be overridden with
``--set key=value``, recorded in a Parquet row and compared across runs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from models.translator_defaults import DEFAULT_TRANSLATOR, TRANSLATOR_DEFAULTS, config_default, config_field

TASKS = ("lungs", "heart", "clavicles")
SEGMENTATION_MODELS = ("fcn", "unet", "segnet")
TRANSFER_METHODS = ("proposed", "self_training", "finetune", "scratch", "source_only")
# Transfer methods that train on labelled target images: not applicable at 0 % labels.
METHODS_NEEDING_TARGET_LABELS = ("finetune", "scratch")
# Transfer methods whose run is the supervised engine's Trainer (engine.target_training,
# engine.self_training): the ones engine.fused can train several of as one computation.
TRAINER_METHODS = (*METHODS_NEEDING_TARGET_LABELS, "self_training")
# Fractions of the target training split that keep their labels (paper, Table II), in percent.
LABEL_FRACTIONS = (0.0, 1.25, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0)
# Training-time augmentation recipes (engine/augmentation.py): "none" is the paper's protocol,
# "affine" the small warps of earlier versions' augment=true, "robust" the default.
AUGMENTATIONS = ("none", "affine", "robust")
# Which epoch of an adaptation run gives its result (engine/selection.py, engine/label_budget.py):
# "schedule", the end of its fixed schedule (its last epoch, or its weight average); "target", the
# epoch its label plan's criterion follows (target plausibility without labels, held-back labels
# with them); "source", the paper's: the best source validation Jaccard through A -> B -> A.
SELECTIONS = ("schedule", "target", "source")
# Whether a transfer run's result replaces M_A as it is (engine/guard.py): "harm", unless the
# label-free evidence (or held-back labels) shows it harmful; "strict", only when its own
# criterion shows it clearly better; "off", always (the paper's protocol).
GUARDS = ("harm", "strict", "off")
# Who labels the target images for a self-training student (engine/self_training.py).
PSEUDO_LABEL_TEACHERS = ("source", "average")
# Which target labels a transfer run may read (engine/label_budget.py): "honest", only its
# label fraction's, for training and epoch selection together; "paper", the paper's protocol, where
# the labelled target validation split also chooses the epoch.
LABEL_BUDGETS = ("honest", "paper")


@dataclass
class RunConfig:
    """Everything that determines one training run. Defaults are the paper's settings, except
    the training augmentation (PAPER_PROTOCOL: the paper trains without) and the transfer settings
    PAPER_TRANSFER lists (the proposed method's balance and selection)."""

    # --- identity of the run (the keys of a Parquet row) ---
    experiment: str = "segmentation"  # "segmentation" (Table I) or "transfer" (Table II)
    model: str = "unet"
    task: str = "lungs"
    fold: int = 0  # test fold of the 5-fold JSRT cross-validation
    n_folds: int = 5
    repetition: int = 0  # transfer: which seeded 60/20/20 split
    method: str = "supervised"  # "supervised" or one of TRANSFER_METHODS
    label_fraction: float | None = None  # percent of the target training split; None outside transfer
    target: str = "montgomery"
    profile: str = "paper"
    seed: int = 0

    # --- data ---
    image_size: int = 256
    # Every segmenter trains with the robust recipe (rotation, zoom, aspect, shift, noise, blur,
    # brightness, contrast, low resolution, gamma; engine/augmentation.py) unless told
    # otherwise: a source model trained to expect other scanners decides most of a transfer.
    # "none" is the paper's protocol (PAPER_PROTOCOL), "affine" earlier versions' augment=true.
    augmentation: str = "robust"
    # Trim padding and collimation bands before resizing, score in the whole frame
    # (data_io.preprocess); false: resize whole images, the behaviour before the content crop.
    crop_borders: bool = True

    # --- segmentation network and optimisation (paper §V-B) ---
    width: float = 1.0  # channel multiplier of the segmentation network
    epochs: int = 150
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    loss: str = "ce"  # "ce" (paper), "ce_dice" or "weighted_ce" (options, never silent)
    init_weights: str = ""  # local weights to start the segmenter from; "" = random init (paper: none shipped)
    eval_every: int = 1

    # --- transfer (paper §IV-C, §V-C; loss weights from the authors' follow-up code) ---
    # The translator's own fields default to the default translator's registry entry
    # (models/translator_defaults.py); translator_arguments() passes them on.
    translator: str = DEFAULT_TRANSLATOR  # "munit" or "cyclegan"
    translator_width: int = config_default("translator_width")
    style_dim: int = config_default("style_dim")
    warmup_epochs: int = 20  # translator trained alone before M_A joins
    transfer_epochs: int = 30
    gan_lr: float = 1e-4
    gan_beta1: float = 0.5
    gan_beta2: float = 0.999
    gan_weight_decay: float = 1e-4
    # w_adv: the follow-up code's 1 let the discriminators win outright (PAPER_TRANSFER)
    w_adv: float = config_default("w_adv")
    w_recon: float = config_default("w_recon")
    w_cycle: float = config_default("w_cycle")
    w_style: float = config_default("w_style")
    w_content: float = config_default("w_content")
    w_seg: float = 1.0
    w_identity: float = config_default("w_identity")  # identity term (both translators), as a multiple of w_cycle
    # Keeping the adversarial game balanced (PAPER_TRANSFER switches these off):
    residual_generators: bool = config_default("residual_generators")  # generators start at the identity
    spectral_norm: bool = config_default("spectral_norm")  # spectral normalisation of the discriminators' layers
    r1_gamma: float = config_default("r1_gamma")  # zero-centred gradient penalty on real discriminator inputs; 0 = off
    instance_noise: float = config_default("instance_noise")  # std of Gaussian noise on discriminator inputs; 0 = off
    d_lr_ratio: float = 1.0  # discriminator learning rate as a multiple of gan_lr
    w_semantic: float = 0.0  # semantic-aware adversarial term on predicted target masks (SeUDA); 0 = off
    # Which epoch of a transfer run gives its result (SELECTIONS): by default its fixed schedule's
    # end; label-free epoch choice ranks candidates poorly on real shifts (docs/adaptation.md).
    selection: str = "schedule"
    # Whether that result replaces M_A as it is (GUARDS): by default unless there is evidence of
    # harm (engine/guard.py); "strict" asks the selection criterion for a clear gain instead.
    guard: str = "harm"
    # The harm guard's tolerances, in the means of its per-image signals (engine/guard.py): a
    # result is refused when, significantly (one-sided, paired), its source-side Jaccard falls by
    # more than guard_source_drop, or the plausibility of its target masks by more than
    # guard_collapse_drop; a source-side loss is outweighed when its target masks are more
    # plausible by guard_rescue_gain (gross failures of M_A repaired). The plausibility of a correct
    # lung mask moves by about 0.04 with a 5 % change of field of view: changes within about that
    # are noise between sound masks, and the collapse and rescue levels lie beyond it.
    guard_source_drop: float = 0.01
    guard_collapse_drop: float = 0.05
    guard_rescue_gain: float = 0.10
    # The strict guard's smallest mean gain in target plausibility that may replace no adaptation:
    # about what a correct lung mask's plausibility changes with a 5 % change of field of view
    # (measured on the source masks), a difference datasets show without any segmentation being better.
    selection_margin: float = 0.04
    # Self-training (method "self_training"): the share of the unlabelled target training images
    # whose pseudo-labels (M_A's predictions) are kept, the most plausible first (selection.py's
    # shape prior), as in curriculum pseudo-labelling; the student trains transfer_epochs epochs.
    pseudo_label_keep: float = 0.8
    # Fine-tuning also trains on the source training images (with their truth) every epoch.
    source_replay: bool = False
    # Who labels the target images for the student: "source", M_A once before the first epoch;
    # "average", refreshed after every epoch by the student's weight average (a mean teacher).
    pseudo_label_teacher: str = "source"
    # The teacher labels each image from its mean foreground probability over test-time variants
    # (engine/guard.py) rather than from one pass.
    pseudo_label_tta: bool = False
    # Pixels where the teacher's probability of its answer is below this are left unlabelled
    # (0.5: every pixel is labelled).
    pseudo_label_confidence: float = 0.5
    # The target labels a run at f % may read (LABEL_BUDGETS): "honest", its f % only (a held-back
    # part of them, or the unlabelled criterion when they are few, chooses the epoch); "paper",
    # the labelled validation split chooses the epoch too (PAPER_LABEL_BUDGET).
    label_budget: str = "honest"

    # --- execution (EXECUTION_FIELDS: how a run executes, not what it computes) ---
    device: str = "auto"  # "auto", "cpu", "cuda"
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    # checkpoints/last.pt is written at most this often, and after the last epoch; <= 0: every epoch.
    # Paper-size last.pt (U-Net + Adam state) is ~0.37 GB and a GPU epoch ~1 s, so not every epoch.
    checkpoint_every_s: float = 300.0
    compile: bool = False  # torch.compile the networks (in place; checkpoints keep their keys)

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}")
        if self.label_budget not in LABEL_BUDGETS:
            raise ValueError(f"label_budget must be one of {', '.join(LABEL_BUDGETS)}, got {self.label_budget!r}")
        if not 0 < self.pseudo_label_keep <= 1:
            raise ValueError(f"pseudo_label_keep must be in (0, 1], got {self.pseudo_label_keep}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.guard not in GUARDS:
            raise ValueError(f"guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")
        if self.pseudo_label_teacher not in PSEUDO_LABEL_TEACHERS:
            raise ValueError(f"pseudo_label_teacher must be one of {', '.join(PSEUDO_LABEL_TEACHERS)}, "
                             f"got {self.pseudo_label_teacher!r}")
        if not 0.5 <= self.pseudo_label_confidence < 1:
            raise ValueError(f"pseudo_label_confidence must be in [0.5, 1), got {self.pseudo_label_confidence}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        values = _upgrade(values)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**dict(values))

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _upgrade(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config written before `augmentation` replaced the boolean `augment` (false: the paper's
    protocol, true: the small affine warps), read as the run it was."""
    values = dict(values)
    if "augment" in values and "augmentation" not in values:
        values["augmentation"] = "affine" if values.pop("augment") else "none"
    return values


# The paper's training protocol for segmenters (§V-B: no augmentation): `--set` it, or sweep both
# with `cxrsweep run --augmentations none,robust`.
PAPER_PROTOCOL: dict[str, Any] = {"augmentation": "none"}


# Table II as the paper ran it: the labelled target validation split chooses every method's epoch.
PAPER_LABEL_BUDGET: dict[str, Any] = {"label_budget": "paper"}


# The proposed method as the paper ran it (loss weights of the authors' follow-up code, epoch chosen
# on source images through A -> B -> A): `--set` each of these to get it back. The defaults differ
# where measurement showed the paper's settings let the discriminators win outright, the
# generators learn an inversion and the run select it (README, "Cross-dataset transfer").
PAPER_TRANSFER: dict[str, Any] = {
    "w_adv": 1.0, "w_identity": 0.0, "spectral_norm": False, "residual_generators": False, "r1_gamma": 0.0,
    "instance_noise": 0.0, "d_lr_ratio": 1.0, "w_semantic": 0.0, "selection": "source", "guard": "off",
}


def transfer_variant(values: Mapping[str, Any]) -> str:
    """Which variant of the proposed method a config (or a trials row's cfg_* values, prefix
    stripped) ran: "default", "paper" (PAPER_TRANSFER), or "custom: field=value, ..." naming
    the fields that differ from the defaults."""
    defaults = RunConfig()
    ran = {name: values[name] for name in PAPER_TRANSFER}
    if all(ran[name] == getattr(defaults, name) for name in ran):
        return "default"
    if all(ran[name] == paper for name, paper in PAPER_TRANSFER.items()):
        return "paper"
    return "custom: " + ", ".join(f"{name}={ran[name]}" for name in ran if ran[name] != getattr(defaults, name))


def translator_arguments(cfg: RunConfig) -> dict[str, Any]:
    """The translator's constructor arguments: its registry defaults, overridden by the config."""
    if cfg.translator not in TRANSLATOR_DEFAULTS:
        raise ValueError(f"unknown translator {cfg.translator!r}; available: {', '.join(sorted(TRANSLATOR_DEFAULTS))}")
    return {name: getattr(cfg, config_field(name), default)
            for name, default in TRANSLATOR_DEFAULTS[cfg.translator].items()}


def warmup_identity(cfg: RunConfig) -> dict[str, Any]:
    """Everything of a config that a translator warm-up computes from: the translator and its
    arguments, the GAN optimiser, the warm-up's length and batches, the images (size, content
    crop, which target) and the splits (seed, repetition, n_folds). Task, method and label
    fraction are absent (every task and fraction of a repetition reuses one warm-up), and so is
    what only the segmentation or the transfer epochs read (augmentation, w_seg, w_semantic, the
    selection) or what merely names a scale (profile: the fields it sets are here themselves).
    The sweep's warm-up trial ids (protocol.grid) and the engine's cache key of warmed translators
    (engine.translation.translator_key) both hash it."""
    return {
        "translator": cfg.translator, "kwargs": translator_arguments(cfg),
        "gan_lr": cfg.gan_lr, "gan_betas": [cfg.gan_beta1, cfg.gan_beta2], "gan_weight_decay": cfg.gan_weight_decay,
        "d_lr_ratio": cfg.d_lr_ratio, "warmup_epochs": cfg.warmup_epochs, "batch_size": cfg.batch_size,
        "image_size": cfg.image_size, "crop_borders": cfg.crop_borders, "target": cfg.target,
        "seed": cfg.seed, "repetition": cfg.repetition, "n_folds": cfg.n_folds,
    }


# Fields that say where and how fast a run executes, not what it computes: they are left out of
# trial ids (protocol/grid.py) and may change when a run is resumed (engine/checkpoints.py).
EXECUTION_FIELDS = frozenset({"device", "num_threads", "checkpoint_every_s", "compile"})


# Each profile is a set of overrides of the paper defaults.
PROFILES: dict[str, dict[str, Any]] = {
    # The paper's protocol: 256 px, full-width networks, 150 epochs, batch 4.
    "paper": {},
    # Reproduces the paper's trends on 2 CPU cores in a few minutes per run.
    "cpu": {
        "image_size": 128,
        "width": 0.25,
        "epochs": 30,
        # On a CPU an image costs the same in batches of 2 or 4, so batch 2 doubles the
        # optimiser steps (the paper's lr 1e-4 is step-limited at 30 epochs on ~150 images).
        "batch_size": 2,
        # Transfer: the paper's 20 warm-up epochs; an 8-channel translator and CycleGAN's 2e-4
        # learning rate so the few hundred GAN steps a CPU affords still converge.
        "warmup_epochs": 20,
        "transfer_epochs": 8,
        "translator_width": 8,
        "gan_lr": 2e-4,
    },
    # The demo's trials: seconds each on 2 CPU cores, yet they learn (64 px, an eighth-width
    # network, 20 epochs). At 64 px the paper's lr 1e-4 leaves a U-Net near 0.6 lungs Jaccard after
    # 15 epochs; Adam's usual 1e-3 brings it to 0.935 (robust recipe, fold 0, 12 s).
    "demo": {
        "image_size": 64,
        "width": 0.125,
        "epochs": 20,
        "batch_size": 2,
        "lr": 1e-3,
        "warmup_epochs": 8,
        "transfer_epochs": 4,
        "translator_width": 8,
        "gan_lr": 2e-4,
    },
    # Seconds per run: tests.
    "smoke": {
        "image_size": 64,
        "width": 0.125,
        "epochs": 2,
        "warmup_epochs": 1,
        "transfer_epochs": 1,
        "translator_width": 8,
    },
}


# `cxrsweep run --gpus-per-trial` default per profile: the GPU share of one trial, so 1 / share
# trials run on a GPU at once. From `benchmarks/bench_gpu.py` (b), aggregate U-Net training
# images/s with 1, 2, 4, 8 trials packed on one GPU through Ray, measured on an NVIDIA H200: paper
# x1.38 / x1.38 / x1.39 (two trials take what packing gives: the GPU is the bottleneck past that),
# cpu x1.85 / x3.31 / x4.55, smoke x1.94 / x3.46 / x5.65 (small trials leave a GPU mostly idle, so
# eight share one). The benchmark recommends the fewest trials within 5 % of the best aggregate.
GPUS_PER_TRIAL: dict[str, float] = {"paper": 0.5, "cpu": 0.125, "demo": 0.125, "smoke": 0.125}

# `cxrsweep run --fuse` default per profile: how many trials of one kind train as one computation
# (engine.fused, engine.fused_proposed). FUSE_DEFAULTS_NOTE says what the values rest on.
FUSED_TRIALS: dict[str, int] = {"paper": 1, "cpu": 1, "demo": 1, "smoke": 1}
# cpu / demo / smoke, measured on 2 CPU cores (benchmarks/bench_fused.py, 2026-12-04): two fused U-Nets
# trained at 1.04-1.39x one trial's images/s, two trials packed side by side at 1.39-2.96x; the
# demo's slice took 260 s fused 4 at a time against 257 s alone. 2026-12-06, U-Net and SegNet at cpu and
# reduced paper size, K = 2 / 4: the vmapped step 0.95-1.45x, member by member (the CPU's way since,
# engine.fused.grouped_on) 0.80-1.58x, side by side 1.18-2.14x. The proposed method's runs
# (engine.fused_proposed), K = 2 / 4: member by member 1.83 / 1.52x (cpu) and 1.39 / 1.46x (paper,
# reduced), side by side 2.04 / 2.06x and 1.64 / 1.90x. paper: no GPU measured yet.
FUSE_DEFAULTS_NOTE = ("1 on a CPU, where fusing measured no faster than trials side by side; 1 for paper "
                      "until benchmarks/bench_fused.py has measured a GPU")


def parse_value(text: str, like: Any) -> Any:
    """Parse a --set value into the type of the field's current value."""
    if isinstance(like, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float) or like is None and _looks_numeric(text):
        return None if text.lower() == "none" else float(text)
    if like is None and text.lower() == "none":
        return None
    return text


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.lower() == "none"


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ["lr=1e-3", "epochs=5"] into {"lr": "1e-3", "epochs": "5"} (values still text)."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def make_config(profile: str = "paper", overrides: Mapping[str, Any] | Iterable[str] = (), **keys: Any) -> RunConfig:
    """Build the effective config: paper defaults, then the profile, then run keys, then overrides.

    `overrides` may be a mapping of typed values or an iterable of "key=value" strings.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    cfg = RunConfig(profile=profile, **PROFILES[profile])
    cfg = _apply(cfg, keys)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    return _apply(cfg, overrides)


def _apply(cfg: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    if "augment" in values and "augmentation" not in values:  # the flag of earlier versions
        values = {**values, "augment": parse_value(values["augment"], False)
                  if isinstance(values["augment"], str) else values["augment"]}
        values = _upgrade(values)
    known = {f.name: f for f in fields(RunConfig)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"unknown config field {key!r}; known fields: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        changes[key] = parse_value(value, current) if isinstance(value, str) and not isinstance(current, str) else value
    return dataclasses.replace(cfg, **changes)


def read_json_file(path: str | Path, what: str = "config file") -> Any:
    """A JSON file's value; a missing or malformed file is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def check_field_names(path: str | Path, names) -> None:
    unknown = sorted(set(names) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown config field(s): {', '.join(unknown)}")

