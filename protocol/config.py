"""Run configuration, its validation, profiles (scale) and presets (protocol).

A `RunConfig` is a flat dataclass so that every field can be overridden with
``--set key=value``, recorded in a Parquet row and compared across runs. Each field declares
what it accepts beside its default (`checked`): its type is the annotation, its range or names
the rule, and a config is checked whole when it is built (`RunConfig(...)`, `from_dict`,
`make_config`, a JSON file, a tuning record), so a bad value stops a command before anything
starts, with a `ConfigError` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from data_io.datasets import check_target_name
from errors import MissingInput, UserError
from models.loss_names import LOSSES
from models.translator_defaults import (
    ARGUMENTS_BEFORE_THEY_EXISTED,
    DEFAULT_TRANSLATOR,
    TRANSLATOR_DEFAULTS,
    config_default,
    config_field,
)

TASKS = ("lungs", "heart", "clavicles")
SEGMENTATION_MODELS = ("fcn", "unet", "segnet")
TRANSFER_METHODS = ("proposed", "self_training", "finetune", "scratch", "source_only")
# Transfer methods that train on labelled target images: not applicable at 0 % labels.
METHODS_NEEDING_TARGET_LABELS = ("finetune", "scratch")
# Transfer methods whose run is the supervised engine's Trainer (engine.transfer.target_training,
# engine.transfer.self_training): the ones engine.fused can train several of as one computation.
TRAINER_METHODS = (*METHODS_NEEDING_TARGET_LABELS, "self_training")
# Fractions of the target training split that keep their labels (paper, Table II), in percent.
LABEL_FRACTIONS = (0.0, 1.25, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0)
# Training-time augmentation recipes (engine/data/augmentation.py): "none" is the paper's protocol,
# "affine" small warps (what a config's `augment=true` stands for), "robust" the default.
AUGMENTATIONS = ("none", "affine", "robust")
# Which epoch of an adaptation run gives its result (engine/evaluation/selection.py, engine/evaluation/label_budget.py):
# "schedule", the end of its fixed schedule (its last epoch, or its weight average); "target", the
# epoch its label plan's criterion follows (target plausibility without labels, held-back labels
# with them); "source", the paper's: the best source validation Jaccard through A -> B -> A.
SELECTIONS = ("schedule", "target", "source")
# Whether a transfer run's result replaces M_A as it is (engine/evaluation/guard.py): "harm", unless the
# label-free evidence (or held-back labels) shows it harmful; "strict", only when its own
# criterion shows it clearly better; "off", always (the paper's protocol).
GUARDS = ("harm", "strict", "off")
# Who labels the target images for a self-training student (engine/transfer/self_training.py).
PSEUDO_LABEL_TEACHERS = ("source", "average")
# Which target labels a transfer run may read (engine/evaluation/label_budget.py): "honest", only its
# label fraction's, for training and epoch selection together; "paper", the paper's protocol, where
# the labelled target validation split also chooses the epoch.
LABEL_BUDGETS = ("honest", "paper")
EXPERIMENT_KINDS = ("segmentation", "transfer")  # a config's experiment (Table I, Table II)
METHODS = ("supervised", *TRANSFER_METHODS)  # a config's method: Table I's, or a transfer method
DEVICES = ("auto", "cpu", "cuda")  # engine.runtime.device.resolve_device
# Segmenters halve the image five times (models/segmenters): a side must divide by 2 ** 5.
IMAGE_SIDE_MULTIPLE = 32


class ConfigError(UserError):
    """A config value, field name, profile or preset that is not allowed; the message names it."""


@dataclass(frozen=True)
class Rule:
    """What a RunConfig field accepts beyond its type (the field's annotation): names (`one_of`,
    a tuple or a function giving one, for names declared below the dataclass), bounds, a multiple,
    or a `check` that raises ConfigError / ValueError with its own reason. Floats must be finite
    unless `infinite` allows +-inf; NaN is never a value."""

    one_of: tuple | Callable[[], Iterable] | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    multiple_of: int | None = None
    check: Callable[[Any], Any] | None = None
    infinite: bool = False

    def names(self) -> tuple:
        return tuple(self.one_of() if callable(self.one_of) else self.one_of)

    def allowed(self) -> str:
        """What the rule allows, as words (the error messages')."""
        parts = []
        if self.one_of is not None:
            parts.append("one of " + ", ".join(map(str, self.names())))
        bounds = [f"{sign} {bound:g}" for sign, bound in ((">=", self.at_least), (">", self.above),
                                                          ("<=", self.at_most), ("<", self.below)) if bound is not None]
        if bounds:
            parts.append(" and ".join(bounds))
        if self.multiple_of is not None:
            parts.append(f"a multiple of {self.multiple_of}")
        return ", ".join(parts) or "any value"

    def problem(self, name: str, value: Any) -> str | None:
        """Why `value` (already of the field's type; None passes) breaks the rule, or None."""
        if value is None:
            return None
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value) and not self.infinite):
            return f"{name} must be a finite number, got {value}"
        if self.one_of is not None and value not in self.names():
            return f"{name} must be one of {', '.join(map(str, self.names()))}, got {value!r}"
        for sign, bound, broken in ((">=", self.at_least, lambda b: value < b), (">", self.above, lambda b: value <= b),
                                    ("<=", self.at_most, lambda b: value > b), ("<", self.below, lambda b: value >= b)):
            if bound is not None and broken(bound):
                return f"{name} must be {self.allowed()}, got {value}"
        if self.multiple_of is not None and value % self.multiple_of:
            return f"{name} must be {self.allowed()}, got {value}"
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as exc:
                return f"{name}: {exc}"
        return None


def checked(default: Any, **rule: Any) -> Any:
    """A RunConfig field with its default and its Rule (see Rule for the keywords)."""
    return dataclasses.field(default=default, metadata={"rule": Rule(**rule)})


@dataclass
class RunConfig:
    """Everything that determines one training run. Defaults are the paper's settings, except
    the training augmentation (PAPER_PROTOCOL: the paper trains without), the label budget
    (PAPER_LABEL_BUDGET) and the transfer settings PAPER_TRANSFER lists (the proposed method's
    balance and selection); the paper preset (PRESETS) restores them all. Every field is
    `checked`: its rule says what it accepts, and a config is checked whole when it is built."""

    # --- identity of the run (the keys of a Parquet row) ---
    # "segmentation" (Table I) or "transfer" (Table II)
    experiment: str = checked("segmentation", one_of=EXPERIMENT_KINDS)
    model: str = checked("unet", one_of=SEGMENTATION_MODELS)
    task: str = checked("lungs", one_of=TASKS)
    fold: int = checked(0, at_least=0)  # test fold (< n_folds) of the 5-fold JSRT cross-validation
    n_folds: int = checked(5, at_least=3)  # test, second validation and training folds
    repetition: int = checked(0, at_least=0)  # transfer: which seeded 60/20/20 split
    method: str = checked("supervised", one_of=METHODS)  # "supervised" or one of TRANSFER_METHODS
    # percent of the target training split; None outside transfer
    label_fraction: float | None = checked(None, at_least=0, at_most=100)
    target: str = checked("montgomery", check=check_target_name)  # a named set or a folder target's name
    profile: str = checked("paper", one_of=lambda: PROFILES)
    seed: int = checked(0, at_least=0)

    # --- data ---
    image_size: int = checked(256, at_least=IMAGE_SIDE_MULTIPLE, multiple_of=IMAGE_SIDE_MULTIPLE)
    # Every segmenter trains with the robust recipe (rotation, zoom, aspect, shift, noise, blur,
    # brightness, contrast, low resolution, gamma; engine/data/augmentation.py) unless told
    # otherwise: a source model trained to expect other scanners decides most of a transfer.
    # "none" is the paper's protocol (PAPER_PROTOCOL), "affine" what `augment=true` stands for.
    augmentation: str = checked("robust", one_of=AUGMENTATIONS)
    # Trim padding and collimation bands before resizing, score in the whole frame
    # (data_io.preprocess); false: resize whole images as they are.
    crop_borders: bool = checked(True)

    # --- segmentation network and optimisation (paper §V-B) ---
    width: float = checked(1.0, above=0)  # channel multiplier of the segmentation network
    epochs: int = checked(150, at_least=1)
    batch_size: int = checked(4, at_least=1)
    lr: float = checked(1e-4, above=0)
    weight_decay: float = checked(5e-4, at_least=0)
    beta1: float = checked(0.9, at_least=0, below=1)  # Adam's betas
    beta2: float = checked(0.999, at_least=0, below=1)
    loss: str = checked("ce", one_of=LOSSES)  # "ce" (paper), "ce_dice" or "weighted_ce" (options, never silent)
    init_weights: str = checked("")  # local weights to start the segmenter from; "" = random init (paper: none shipped)
    eval_every: int = checked(1, at_least=1)

    # --- transfer (paper §IV-C, §V-C; loss weights from the authors' follow-up code) ---
    # The translator's own fields default to the default translator's registry entry
    # (models/translator_defaults.py); translator_arguments() passes them on.
    translator: str = checked(DEFAULT_TRANSLATOR, one_of=tuple(TRANSLATOR_DEFAULTS))  # "munit" or "cyclegan"
    translator_width: int = checked(config_default("translator_width"), at_least=1)
    # The MUNIT's decoders draw a smooth intensity field on this grid of cells, not the image
    # (models/translators/munit.py); 0: they draw the image, as the paper's did.
    translator_field_grid: int = checked(config_default("translator_field_grid"), at_least=0)
    style_dim: int = checked(config_default("style_dim"), at_least=1)
    warmup_epochs: int = checked(20, at_least=1)  # translator trained alone before M_A joins
    transfer_epochs: int = checked(30, at_least=1)
    # The self-training student's epochs (engine/transfer/self_training.py): a teacher refreshed after every
    # epoch needs rounds to improve its labels, and a student epoch costs a fraction of a proposed one.
    self_training_epochs: int = checked(30, at_least=1)
    gan_lr: float = checked(1e-4, above=0)
    gan_beta1: float = checked(0.5, at_least=0, below=1)
    gan_beta2: float = checked(0.999, at_least=0, below=1)
    gan_weight_decay: float = checked(1e-4, at_least=0)
    # w_adv: the follow-up code's 1 let the discriminators win outright (PAPER_TRANSFER)
    w_adv: float = checked(config_default("w_adv"), at_least=0)
    w_recon: float = checked(config_default("w_recon"), at_least=0)
    w_cycle: float = checked(config_default("w_cycle"), at_least=0)
    w_style: float = checked(config_default("w_style"), at_least=0)
    w_content: float = checked(config_default("w_content"), at_least=0)
    w_seg: float = checked(1.0, at_least=0)
    # identity term (both translators), as a multiple of w_cycle
    w_identity: float = checked(config_default("w_identity"), at_least=0)
    # Keeping the adversarial game balanced (PAPER_TRANSFER switches these off):
    residual_generators: bool = checked(config_default("residual_generators"))  # generators start at the identity
    # spectral normalisation of the discriminators' layers
    spectral_norm: bool = checked(config_default("spectral_norm"))
    # zero-centred gradient penalty on real discriminator inputs; 0 = off
    r1_gamma: float = checked(config_default("r1_gamma"), at_least=0)
    # std of Gaussian noise on discriminator inputs; 0 = off
    instance_noise: float = checked(config_default("instance_noise"), at_least=0)
    d_lr_ratio: float = checked(1.0, above=0)  # discriminator learning rate as a multiple of gan_lr
    # semantic-aware adversarial term on predicted target masks (SeUDA); 0 = off
    w_semantic: float = checked(0.0, at_least=0)
    # Which epoch of a transfer run gives its result (SELECTIONS): by default its fixed schedule's
    # end; label-free epoch choice ranks candidates poorly on real shifts (docs/adaptation.md).
    selection: str = checked("schedule", one_of=SELECTIONS)
    # Whether that result replaces M_A as it is (GUARDS): by default unless there is evidence of
    # harm (engine/evaluation/guard.py); "strict" asks the selection criterion for a clear gain instead.
    guard: str = checked("harm", one_of=GUARDS)
    # The harm guard's tolerances, in the means of its per-image signals (engine/evaluation/guard.py): a
    # result is refused when, significantly (one-sided, paired), its source-side Jaccard falls by
    # more than guard_source_drop, or the plausibility of its target masks by more than
    # guard_collapse_drop; a source-side loss is outweighed when its target masks are more
    # plausible by guard_rescue_gain (gross failures of M_A repaired). The plausibility of a correct
    # lung mask moves by about 0.04 with a 5 % change of field of view: changes within about that
    # are noise between sound masks, and the collapse and rescue levels lie beyond it.
    guard_source_drop: float = checked(0.01, at_least=0, at_most=1)
    guard_collapse_drop: float = checked(0.05, at_least=0, at_most=1)
    guard_rescue_gain: float = checked(0.10, at_least=0, at_most=1)
    # The strict guard's smallest mean gain in target plausibility that may replace no adaptation:
    # about what a correct lung mask's plausibility changes with a 5 % change of field of view
    # (measured on the source masks), a difference datasets show without any segmentation being better.
    selection_margin: float = checked(0.04, at_least=0, at_most=1)
    # Self-training (method "self_training"): the share of the unlabelled target training images
    # whose pseudo-labels (M_A's predictions) are kept, the most plausible first (selection.py's
    # shape prior), as in curriculum pseudo-labelling; the student trains self_training_epochs epochs.
    pseudo_label_keep: float = checked(0.8, above=0, at_most=1)
    # Fine-tuning also trains on the source training images (with their truth) every epoch: with
    # few target labels a network trained on them alone learns them by heart and forgets what it
    # knew (measured on the mild phantoms: docs/adaptation.md). The paper's fine-tuning does not.
    source_replay: bool = checked(True)
    # Who labels the target images for the student: "source", M_A once before the first epoch;
    # "average", refreshed after every epoch by the student's weight average (a mean teacher).
    pseudo_label_teacher: str = checked("average", one_of=PSEUDO_LABEL_TEACHERS)
    # The teacher labels each image from its mean foreground probability over test-time variants
    # (engine/evaluation/guard.py) rather than from one pass.
    pseudo_label_tta: bool = checked(True)
    # Pixels where the teacher's probability of its answer is below this are left unlabelled
    # (0.5: every pixel is labelled).
    pseudo_label_confidence: float = checked(0.5, at_least=0.5, below=1)
    # The student's labelled target images repeated up to the size of the target training split,
    # as fine-tuning repeats them; off: each once among the source and pseudo-labelled images,
    # where one true label lowered the student's result on the severe phantoms (docs/adaptation.md).
    pseudo_label_repeat_labelled: bool = checked(True)
    # The target labels a run at f % may read (LABEL_BUDGETS): "honest", its f % only (a held-back
    # part of them, or the unlabelled criterion when they are few, chooses the epoch); "paper",
    # the labelled validation split chooses the epoch too (PAPER_LABEL_BUDGET).
    label_budget: str = checked("honest", one_of=LABEL_BUDGETS)

    # --- execution (EXECUTION_FIELDS: how a run executes, not what it computes) ---
    device: str = checked("auto", one_of=DEVICES)
    num_threads: int = checked(0, at_least=0)  # torch intra-op threads on CPU; 0 = torch's default
    # checkpoints/last.pt is written at most this often, and after the last epoch; <= 0: every epoch.
    # Paper-size last.pt (U-Net + Adam state) is ~0.37 GB and a GPU epoch ~1 s, so not every epoch.
    checkpoint_every_s: float = checked(300.0, infinite=True)
    compile: bool = checked(False)  # torch.compile the networks (in place; checkpoints keep their keys)

    def __post_init__(self) -> None:
        """Every field of its type (ints where a float is asked become floats) and within its rule."""
        for f in fields(self):
            value = field_value(f.name, getattr(self, f.name))
            setattr(self, f.name, value)
        if self.fold >= self.n_folds:
            raise ConfigError(f"fold must be < n_folds ({self.n_folds}), got {self.fold}")
        if self.translator == "munit" and self.translator_field_grid and not self.residual_generators:
            raise ConfigError("translator_field_grid > 0 draws a correction of the image, which needs "
                              "residual_generators=true; set translator_field_grid=0 for generators that "
                              "draw the image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        values = _upgrade(values)
        check_field_names(values)
        return cls(**values)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def _upgrade(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config written before `augmentation` replaced the boolean `augment` (false: the paper's
    protocol, true: the small affine warps), or before `translator_field_grid` existed (its MUNIT
    drew the image: 0), read as the run it was."""
    values = dict(values)
    if "augment" in values and "augmentation" not in values:
        values["augmentation"] = "affine" if _as_bool("augment", values.pop("augment")) else "none"
    if "translator_width" in values:  # a config that has translator fields at all
        for argument, value in ARGUMENTS_BEFORE_THEY_EXISTED.get(values.get("translator", DEFAULT_TRANSLATOR),
                                                                 {}).items():
            values.setdefault(config_field(argument), value)
    return values


# The paper's training protocol for segmenters (§V-B: no augmentation): part of the paper preset
# (PRESETS); `cxrsweep run --augmentations none,robust` sweeps it beside ours.
PAPER_PROTOCOL: dict[str, Any] = {"augmentation": "none"}


# Table II's baselines as the paper ran them: the labelled target validation split chooses every
# method's epoch, and fine-tuning trains on the target labels alone.
PAPER_LABEL_BUDGET: dict[str, Any] = {"label_budget": "paper", "source_replay": False}


# The proposed method as the paper ran it (loss weights of the authors' follow-up code, epoch chosen
# on source images through A -> B -> A): part of the paper preset (PRESETS). The defaults differ
# where measurement showed the paper's settings let the discriminators win outright, the
# generators learn an inversion and the run select it (docs/transfer.md).
PAPER_TRANSFER: dict[str, Any] = {
    "w_adv": 1.0, "w_identity": 0.0, "spectral_norm": False, "residual_generators": False, "r1_gamma": 0.0,
    "instance_noise": 0.0, "d_lr_ratio": 1.0, "w_semantic": 0.0, "selection": "source", "guard": "off",
    "translator_field_grid": 0,
}


def transfer_variant(values: Mapping[str, Any]) -> str:
    """Which variant of the proposed method a config (or a trials row's cfg_* values, prefix
    stripped) ran: "default", "paper" (PAPER_TRANSFER), or "custom: field=value, ..." naming
    the fields that differ from the defaults."""
    defaults = RunConfig()
    # A field a row does not record did not exist when it ran: it is not compared.
    ran = {name: values[name] for name in PAPER_TRANSFER if name in values}
    if all(ran[name] == getattr(defaults, name) for name in ran):
        return "default"
    if all(ran[name] == PAPER_TRANSFER[name] for name in ran):
        return "paper"
    return "custom: " + ", ".join(f"{name}={ran[name]}" for name in ran if ran[name] != getattr(defaults, name))


def translator_arguments(cfg: RunConfig) -> dict[str, Any]:
    """The translator's constructor arguments: its registry defaults, overridden by the config."""
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
    (engine.transfer.proposed.warmup.translator_key) both hash it."""
    return {
        "translator": cfg.translator, "kwargs": translator_arguments(cfg),
        "gan_lr": cfg.gan_lr, "gan_betas": [cfg.gan_beta1, cfg.gan_beta2], "gan_weight_decay": cfg.gan_weight_decay,
        "d_lr_ratio": cfg.d_lr_ratio, "warmup_epochs": cfg.warmup_epochs, "batch_size": cfg.batch_size,
        "image_size": cfg.image_size, "crop_borders": cfg.crop_borders, "target": cfg.target,
        "seed": cfg.seed, "repetition": cfg.repetition, "n_folds": cfg.n_folds,
    }


# Fields that say where and how fast a run executes, not what it computes: they are left out of
# trial ids (protocol/grid.py) and may change when a run is resumed (engine/runtime/checkpoints.py).
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
        # On both design phantom regimes the student's weight average was still gaining on the
        # target, and its source side recovering, at 30 epochs (docs/adaptation.md); the paper's count.
        "self_training_epochs": 30,
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
        "self_training_epochs": 8,
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
        "self_training_epochs": 1,
        "translator_width": 8,
    },
}


# Each preset is a protocol: the settings a config follows, apart from its scale (PROFILES set
# sizes, widths, epochs and learning rates; presets what is trained on, how and how the epoch is
# chosen; the two never set the same field). `--preset`, then `--set` over it.
PRESETS: dict[str, dict[str, Any]] = {
    # This project's protocol, RunConfig's defaults: the robust augmentation recipe, the honest
    # label budget, the balanced adversarial game, each adaptation method's fixed schedule under
    # the harm guard, fine-tuning with source replay.
    "cxrsweep": {},
    # The paper's protocol in full: no augmentation, the labelled target validation split chooses
    # every transfer run's epoch, the proposed method with the follow-up code's loss weights and its
    # epoch chosen on source images through A -> B -> A.
    "paper": {**PAPER_PROTOCOL, **PAPER_LABEL_BUDGET, **PAPER_TRANSFER},
}
DEFAULT_PRESET = "cxrsweep"


# `cxrsweep run --gpus-per-trial` default per profile: the GPU share of one trial, so 1 / share
# trials run on a GPU at once. A paper-size trial keeps a GPU busy, so two share one (more gain
# nothing); the smaller profiles' trials leave a GPU mostly idle, so eight share one.
# `benchmarks/bench_gpu.py` measures it and recommends the fewest trials per GPU within 5 % of the
# best aggregate images/s (figures: docs/performance.md).
GPUS_PER_TRIAL: dict[str, float] = {"paper": 0.5, "cpu": 0.125, "demo": 0.125, "smoke": 0.125}

# `cxrsweep run --fuse` default per profile: how many trials of one kind train as one computation
# (engine.fused, engine.fused.proposed). FUSE_DEFAULTS_NOTE says what the values rest on.
FUSED_TRIALS: dict[str, int] = {"paper": 1, "cpu": 1, "demo": 1, "smoke": 1}
# What the CPU measured (benchmarks/bench_fused.py) is in docs/performance.md#fused-trials.
FUSE_DEFAULTS_NOTE = ("1 on a CPU, where fusing measured no faster than trials side by side; 1 for paper "
                      "until benchmarks/bench_fused.py has measured a GPU")


# Words a boolean field accepts from text (--set, a JSON string).
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
NONE_WORDS = ("none", "null")


def _field_kinds(name: str) -> set[str]:
    """The type names of a field's annotation ("float | None" -> {"float", "None"})."""
    annotation = _FIELDS[name].type
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return {part.strip() for part in text.split("|")}


def field_value(name: str, value: Any) -> Any:
    """`value` as field `name` holds it: of the field's type (an int where a float is asked
    becomes a float; numpy scalars become Python's), within its rule; ConfigError naming the
    field, the value and what is allowed otherwise. Text is not parsed here (parse_field does)."""
    if name not in _FIELDS:
        raise ConfigError(unknown_field_message([name]))
    kinds = _field_kinds(name)
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{name}: None is not {_KIND_WORDS[_main_kind(kinds)]}")
    kind = _main_kind(kinds)
    boolean = isinstance(value, (bool, np.bool_))
    if kind == "bool":
        ok = boolean
        value = bool(value) if ok else value
    elif kind == "int":
        ok = isinstance(value, numbers.Integral) and not boolean
        value = int(value) if ok else value
    elif kind == "float":
        ok = isinstance(value, numbers.Real) and not boolean
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{name}: {value!r} is not {_KIND_WORDS[kind]}")
    problem = _FIELDS[name].metadata["rule"].problem(name, value)
    if problem:
        raise ConfigError(problem)
    return value


_KIND_WORDS = {"bool": "a boolean (true/false, yes/no, on/off, 1/0)", "int": "an integer", "float": "a number",
               "str": "a string"}


def _main_kind(kinds: set[str]) -> str:
    return next(k for k in ("bool", "int", "float", "str") if k in kinds)


def parse_field(name: str, value: Any) -> Any:
    """A field's value from --set or a JSON file: text is parsed into the field's type (a JSON
    string such as "1e-3" included), then checked as `field_value` checks it."""
    if name not in _FIELDS:
        raise ConfigError(unknown_field_message([name]))
    kinds = _field_kinds(name)
    kind = _main_kind(kinds)
    if isinstance(value, str) and kind != "str":
        text = value.strip()
        if "None" in kinds and text.lower() in NONE_WORDS:
            return None
        if kind == "bool":
            return field_value(name, _as_bool(name, text))
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not {_KIND_WORDS[kind]}") from None
    return field_value(name, value)


def _as_bool(name: str, value: Any) -> Any:
    """A boolean from its words (TRUE_WORDS, FALSE_WORDS); any other value as it is."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
        raise ConfigError(f"{name}: {value!r} is not {_KIND_WORDS['bool']}")
    return value.strip().lower() in TRUE_WORDS


def unknown_field_message(names: Iterable[str]) -> str:
    """'unknown config field 'lrr' (did you mean 'lr'?)', for every unknown name."""
    parts = []
    for name in names:
        close = difflib.get_close_matches(str(name), list(_FIELDS), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return (f"unknown config field{'s' if len(parts) > 1 else ''} {', '.join(parts)}; "
            "the fields are RunConfig's (protocol/config.py)")


def check_field_names(names: Iterable[str]) -> None:
    unknown = [name for name in dict.fromkeys(names) if name not in _FIELDS]
    if unknown:
        raise ConfigError(unknown_field_message(unknown))


def check_values(values: Mapping[str, Any], origin: str | Path) -> dict[str, Any]:
    """The values of a JSON file or a tuning record's entry, each parsed and checked as its field
    (parse_field); an error names `origin` (the file) first."""
    try:
        values = _upgrade(values)
        check_field_names(values)
        return {name: parse_field(name, value) for name, value in values.items()}
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ["lr=1e-3", "epochs=5"] into {"lr": "1e-3", "epochs": "5"} (values still text)."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def make_config(profile: str = "paper", overrides: Mapping[str, Any] | Iterable[str] = (), preset: str = DEFAULT_PRESET,
                **keys: Any) -> RunConfig:
    """Build the effective config: the defaults, the profile (scale), the preset (protocol), then
    run keys, then overrides.

    `overrides` may be a mapping of values (text is parsed into each field's type) or an
    iterable of "key=value" strings.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = RunConfig(profile=profile, **PROFILES[profile], **PRESETS[preset])
    cfg = _apply(cfg, keys)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    return _apply(cfg, overrides)


def _apply(cfg: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    values = _upgrade(values)  # an `augment` flag becomes its augmentation recipe
    check_field_names(values)
    return dataclasses.replace(cfg, **{key: parse_field(key, value) for key, value in values.items()})


def config_changes(cfg: RunConfig, profile: str | None = None, preset: str | None = None) -> list[tuple[str, Any, str]]:
    """(field, value, where it comes from) of every field of `cfg` that differs from RunConfig's
    defaults: "profile NAME", "preset NAME", or "run" (the command's run keys, --config, --set)
    where neither sets it to that value."""
    defaults = RunConfig()
    changes = []
    for f in fields(RunConfig):
        value = getattr(cfg, f.name)
        if value == getattr(defaults, f.name):
            continue
        if profile is not None and (f.name == "profile" or PROFILES[profile].get(f.name, _UNSET) == value):
            source = f"profile {profile}"
        elif preset is not None and PRESETS[preset].get(f.name, _UNSET) == value:
            source = f"preset {preset}"
        else:
            source = "run"
        changes.append((f.name, value, source))
    return changes


_UNSET = object()


def read_json_file(path: str | Path, what: str = "config file") -> Any:
    """A JSON file's value; a missing or malformed file is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInput(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} is a folder, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


_FIELDS = {f.name: f for f in fields(RunConfig)}
