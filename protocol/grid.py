"""The experiment grid: Table I, Table II and what each trial depends on.

Table I (`segmentation`): every segmentation model x task x JSRT cross-validation fold.
Table II (`transfer`): every transfer method x label fraction x task x repetition (x target),
where repetition r is a seeded 60/20/20 split of the target and uses JSRT fold r % n_folds.

Dependencies are explicit trials, so the sweep schedules them first:
- Every transfer method needs M_A, the U-Net segmentation run of the matching task, fold and
  profile (`scratch` takes only its architecture from it): that is the Table I trial itself,
  so it is trained once and shared by both tables.
- `proposed` also needs the translator warm-up of its target and repetition, shared by every
  task and label fraction.

Fig. 9 (`transfer_qualitative`): the targets label lungs only, so heart and clavicle transfer
has no number. For each selected target and each of those tasks (as `--tasks` allows), when
the selection includes `proposed` at 0 % labels, the grid adds one `proposed` run at 0 % for
the first selected repetition. It depends on the same M_A (the Table I U-Net of that task and
fold) and the same translator warm-up as the lungs cells, both reused. Like warm-ups, these
runs are outputs of the sweep but no row of Table II: their folders OUT/runs/<trial_id>/ keep
the overlays, translations and result.json that the report's Fig. 9 reads.

Trial ids are readable keys plus a short hash of the effective config, so two runs of the
same cell with the same config share one id (and one output folder, which is how completed
trials are reused), while a changed config never silently reuses an old result.
"""
from __future__ import annotations

import dataclasses
import graphlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from data_io.datasets import TARGET_DATASETS, check_target_name
from errors import UserError
from models.translator_defaults import TRANSLATOR_DEFAULTS, config_field
from protocol.config import (
    AUGMENTATIONS,
    EXECUTION_FIELDS,
    LABEL_FRACTIONS,
    METHODS_NEEDING_TARGET_LABELS,
    SEGMENTATION_MODELS,
    TASKS,
    TRANSFER_METHODS,
    RunConfig,
    make_config,
    warmup_identity,
)

EXPERIMENTS = ("segmentation", "transfer", "all")

# The target datasets label lungs only, so Table II is measurable for lungs only; heart and
# clavicle transfer is qualitative (Fig. 9): one overlay-only run per target (QUALITATIVE).
TRANSFER_TASKS = ("lungs",)
QUALITATIVE_TASKS = tuple(t for t in TASKS if t not in TRANSFER_TASKS)

# The paper's M_A is a U-Net (skip connections keep the translators' gradients alive).
TRANSFER_SEGMENTER = "unet"

# Trial kinds. Warm-ups and qualitative runs produce no row in the result tables.
SEGMENTATION = "segmentation"
TRANSFER = "transfer"
TRANSLATOR_WARMUP = "translator_warmup"
QUALITATIVE = "transfer_qualitative"  # Fig. 9: proposed at 0 % on a task the target does not label

# A hook that gives a Table I / II cell's config its tuned values (protocol.tuned.TuningRecord.adjust);
# applied to cells only, never to translator warm-ups.
Tuned = Callable[[RunConfig], RunConfig]

# Translator, transfer-loss, selection, guard and pseudo-label fields are recognised by prefix, and
# every translator argument by the registry's defaults, so fields added later join the right group
# without an edit here.
_TRANSFER_PREFIXES = ("translator", "gan_", "w_", "selection", "guard", "pseudo_label_")
_TRANSLATOR_FIELDS = frozenset(config_field(name) for defaults in TRANSLATOR_DEFAULTS.values() for name in defaults)


def _is_transfer_only(name: str) -> bool:
    """Fields a segmentation run ignores. They are reset to the profile's values in Table I
    configs so that a Table I trial and the M_A a transfer trial asks for are the same trial
    (whatever preset or --set gave the transfer side)."""
    return name.startswith(_TRANSFER_PREFIXES) or name in _TRANSLATOR_FIELDS or name in {
        "repetition", "method", "label_fraction", "target", "style_dim", "warmup_epochs", "transfer_epochs",
        "self_training_epochs",
        "d_lr_ratio", "label_budget", "source_replay"}


# Methods that read M_A (scratch: its architecture only), and the one that also needs the
# warmed translator.
METHODS_NEEDING_SEGMENTER = frozenset({"proposed", "self_training", "finetune", "scratch", "source_only"})
METHODS_NEEDING_TRANSLATOR = frozenset({"proposed"})

# The config field that sets how many epochs a transfer method trains (None: it trains nothing).
# finetune and scratch train `epochs`, the same budget (engine/transfer/target_training.py); proposed
# (after its warm-up, a trial of its own) `transfer_epochs`, self_training's student `self_training_epochs`;
# source_only applies M_A as it is.
EPOCHS_FIELD = {"proposed": "transfer_epochs", "self_training": "self_training_epochs", "finetune": "epochs",
                "scratch": "epochs", "source_only": None}


@dataclass(frozen=True)
class TrialSpec:
    """One cell of the grid (or one dependency) with everything needed to run it."""

    trial_id: str
    kind: str  # SEGMENTATION | TRANSFER | TRANSLATOR_WARMUP | QUALITATIVE
    config: RunConfig
    depends_on: tuple[str, ...] = ()
    not_applicable: str | None = None  # why this cell has no number; None when it runs
    # Sorted ((dataset name, content fingerprint), ...) of the data the trial reads, at its image size;
    # empty until the driver has loaded the data (`Grid.with_data`). Part of the trial's
    # identity: a finished trial is reused only for the same data (protocol.store).
    data: tuple[tuple[str, str], ...] = ()

    @property
    def has_row(self) -> bool:
        """Whether the trial is a cell of Table I / II (warm-ups and qualitative runs are not)."""
        return self.kind not in (TRANSLATOR_WARMUP, QUALITATIVE)

    @property
    def training_epochs(self) -> int:
        """The epochs the trial trains, what its cost grows with: a Table I trial `epochs`, a
        translator warm-up `warmup_epochs`, a Fig. 9 run (proposed) `transfer_epochs`, a Table II
        cell as its method's EPOCHS_FIELD says (0 for source_only)."""
        if self.kind == SEGMENTATION:
            return self.config.epochs
        if self.kind == TRANSLATOR_WARMUP:
            return self.config.warmup_epochs
        field_name = "transfer_epochs" if self.kind == QUALITATIVE else EPOCHS_FIELD[self.config.method]
        return getattr(self.config, field_name) if field_name else 0

    @property
    def datasets(self) -> tuple[str, ...]:
        """The datasets the trial reads: JSRT, plus the target of a transfer-side trial."""
        return ("jsrt",) if self.kind == SEGMENTATION else ("jsrt", self.config.target)


@dataclass
class Grid:
    """Trials in declaration order, dependencies included, keyed by trial id."""

    trials: dict[str, TrialSpec] = field(default_factory=dict)

    def add(self, spec: TrialSpec) -> None:
        existing = self.trials.get(spec.trial_id)
        if existing is not None and existing != spec:
            raise ValueError(f"two different trials share the id {spec.trial_id}")
        self.trials.setdefault(spec.trial_id, spec)

    def runnable(self) -> list[TrialSpec]:
        return [t for t in self.trials.values() if t.not_applicable is None]

    def not_applicable(self) -> list[TrialSpec]:
        return [t for t in self.trials.values() if t.not_applicable is not None]

    def with_data(self, fingerprints: dict[str, str]) -> "Grid":
        """The same trials, each runnable one carrying the fingerprints of the datasets it reads
        (a cell that is not applicable reads nothing: it is declared so by method and fraction)."""
        missing = sorted({n for t in self.runnable() for n in t.datasets} - set(fingerprints))
        if missing:
            raise ValueError(f"no data loaded for {', '.join(missing)}")

        def carrying(spec: TrialSpec) -> TrialSpec:
            if spec.not_applicable is not None:
                return spec
            return dataclasses.replace(spec, data=tuple(sorted((n, fingerprints[n]) for n in spec.datasets)))

        return Grid({trial_id: carrying(spec) for trial_id, spec in self.trials.items()})

    def stages(self) -> list[list[TrialSpec]]:
        """Runnable trials in dependency layers: every trial's dependencies sit in earlier layers."""
        runnable = {t.trial_id: t for t in self.runnable()}
        for spec in runnable.values():
            missing = [d for d in spec.depends_on if d not in runnable]
            if missing:
                raise ValueError(f"{spec.trial_id} depends on {missing}, which is not in the grid")
        return [[runnable[trial_id] for trial_id in layer]
                for layer in dependency_layers({t: s.depends_on for t, s in runnable.items()})]


def dependency_layers(depends_on: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The keys of `depends_on` (id -> the ids it depends on, all of them keys) in layers: a key
    sits in the layer after the last of its dependencies (layer 0: no dependencies), so its layer
    is the length of its longest chain of dependencies. Within a layer, keys keep the mapping's
    order. A dependency cycle raises ValueError naming the keys it leaves unplaced."""
    position = {key: i for i, key in enumerate(depends_on)}
    sorter = graphlib.TopologicalSorter({key: tuple(deps) for key, deps in depends_on.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError:
        pass  # place what the cycle does not block, then name the rest
    layers: list[list[str]] = []
    while layer := sorted(sorter.get_ready(), key=position.__getitem__):
        layers.append(layer)
        sorter.done(*layer)
    placed = {key for layer in layers for key in layer}
    if len(placed) < len(position):
        raise ValueError(f"dependency cycle among {sorted(set(position) - placed)}")
    return layers


def config_hash(cfg: RunConfig, only: Iterable[str] | None = None) -> str:
    """Eight hex digits that change whenever a field that affects the result changes."""
    values = cfg.to_dict()
    names = sorted(only) if only is not None else sorted(n for n in values if n not in EXECUTION_FIELDS)
    return _hash({n: values[n] for n in names})


def _hash(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def _fraction_text(fraction: float) -> str:
    return f"{fraction:g}"


def segmentation_config(base: RunConfig, model: str, task: str, fold: int) -> RunConfig:
    """The config of a Table I trial; transfer-only fields take the profile's values."""
    profile_defaults = make_config(base.profile).to_dict()
    reset = {name: value for name, value in profile_defaults.items() if _is_transfer_only(name)}
    reset.update(method="supervised", label_fraction=None)
    return base.replace(experiment=SEGMENTATION, model=model, task=task, fold=fold, **reset)


def source_model_config(cfg: RunConfig) -> RunConfig:
    """M_A of a transfer config: the Table I U-Net of its task on JSRT fold `repetition % n_folds`
    (the sweep's dependency trial and `cxrsweep train-transfer`'s own M_A alike)."""
    return segmentation_config(cfg, TRANSFER_SEGMENTER, cfg.task, cfg.repetition % cfg.n_folds)


def segmentation_trial(base: RunConfig, model: str, task: str, fold: int, tuned: Tuned | None = None) -> TrialSpec:
    return _segmentation_spec(segmentation_config(base, model, task, fold), tuned)


def _segmentation_spec(cfg: RunConfig, tuned: Tuned | None) -> TrialSpec:
    if tuned is not None:
        cfg = tuned(cfg)
    trial_id = f"segmentation-{cfg.model}-{cfg.task}-fold{cfg.fold}-{cfg.profile}-{config_hash(cfg)}"
    return TrialSpec(trial_id, SEGMENTATION, cfg)


def warmup_trial(base: RunConfig, target: str, repetition: int) -> TrialSpec:
    cfg = base.replace(
        experiment=TRANSFER, method="proposed", model=TRANSFER_SEGMENTER, task=TRANSFER_TASKS[0],
        label_fraction=None, target=target, repetition=repetition, fold=repetition % base.n_folds,
        # A warm-up trains translators only and reads no training recipe: one spec serves every
        # recipe of a grid (build_grid's augmentations), so the recipe is fixed here.
        augmentation="none",
    )
    key = _hash(warmup_identity(cfg))
    trial_id = f"warmup-{cfg.translator}-{target}-rep{repetition}-{cfg.profile}-{key}"
    return TrialSpec(trial_id, TRANSLATOR_WARMUP, cfg)


def not_applicable_reason(method: str, label_fraction: float) -> str | None:
    if method in METHODS_NEEDING_TARGET_LABELS and label_fraction == 0:
        return f"{method} needs target labels and this cell has 0 %"
    if method == "source_only" and label_fraction != 0:
        return "source_only uses no target labels: its result is the 0 % row"
    return None


def transfer_trials(base: RunConfig, method: str, task: str, target: str, repetition: int,
                    label_fraction: float, tuned: Tuned | None = None) -> list[TrialSpec]:
    """A Table II cell followed by the dependency trials it needs (none when not applicable).
    `tuned` adjusts the cell and its M_A (the Table I trial, adjusted the same way there)."""
    untuned = base.replace(
        experiment=TRANSFER, method=method, model=TRANSFER_SEGMENTER, task=task, target=target,
        repetition=repetition, fold=repetition % base.n_folds, label_fraction=float(label_fraction),
    )
    cfg = tuned(untuned) if tuned is not None else untuned
    reason = not_applicable_reason(method, label_fraction)
    dependencies: list[TrialSpec] = []
    if reason is None and method in METHODS_NEEDING_SEGMENTER:
        dependencies.append(_segmentation_spec(source_model_config(untuned), tuned))
    if reason is None and method in METHODS_NEEDING_TRANSLATOR:
        dependencies.append(warmup_trial(base, target, repetition))
    trial_id = (
        f"transfer-{method}-{task}-{target}-rep{repetition}-labels{_fraction_text(label_fraction)}"
        f"-{cfg.profile}-{config_hash(cfg)}"
    )
    cell = TrialSpec(trial_id, TRANSFER, cfg, tuple(d.trial_id for d in dependencies), reason)
    return [cell, *dependencies]


def qualitative_trials(base: RunConfig, task: str, target: str, repetition: int,
                       tuned: Tuned | None = None) -> list[TrialSpec]:
    """The Fig. 9 run of `task` on `target` (proposed, 0 % labels) followed by its dependencies:
    the same M_A and warm-up a lungs cell of that repetition uses."""
    cell, *dependencies = transfer_trials(base, "proposed", task, target, repetition, 0.0, tuned)
    trial_id = cell.trial_id.replace("transfer-", "qualitative-", 1)
    return [TrialSpec(trial_id, QUALITATIVE, cell.config, cell.depends_on), *dependencies]


def _check_choice(flag: str, values: Sequence, allowed: Sequence) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UserError(f"{flag}: unknown value(s) {', '.join(map(str, bad))}; "
                        f"choose from {', '.join(map(str, allowed))}")


def build_grid(
    experiment: str,
    base: RunConfig,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    folds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    repetitions: Sequence[int] | None = None,
    targets: Sequence[str] | None = None,
    tuned: Tuned | None = None,
    augmentations: Sequence[str] | None = None,
) -> Grid:
    """The trials of `segmentation`, `transfer` or `all`, restricted to the given selections.

    `None` selects everything: all models, tasks and folds for Table I; all methods and label
    fractions, lungs, repetitions 0..n_folds-1 and Montgomery for Table II, plus the Fig. 9
    runs of heart and clavicles. Selected tasks the targets do not label (heart, clavicles)
    give only those qualitative runs, which need `proposed` and 0 % in the selection.
    `tuned` gives the cells (not the warm-ups) their tuned values (`cxrsweep run --config`).
    `augmentations` (default: the base config's) runs the whole selection once per training
    recipe, e.g. ("none", "robust"): the paper's protocol and ours side by side. Translator
    warm-ups read no augmentation and are shared by both.
    """
    recipes = list(dict.fromkeys(augmentations or [base.augmentation]))
    _check_choice("--augmentations", recipes, AUGMENTATIONS)
    grid = Grid()
    for recipe in recipes:
        for spec in _build_grid(experiment, base.replace(augmentation=recipe), models, tasks, folds, methods,
                                fractions, repetitions, targets, tuned).trials.values():
            grid.add(spec)
    return grid


def check_folds(folds: list[int], n_folds: int) -> list[int]:
    """`folds` (--folds), each a JSRT cross-validation fold of `n_folds`."""
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad:
        raise UserError(f"--folds: {bad} outside 0..{n_folds - 1}")
    return folds


def check_repetitions(repetitions: list[int]) -> list[int]:
    """`repetitions` (--repetitions), none negative."""
    if any(r < 0 for r in repetitions):
        raise UserError(f"--repetitions: {repetitions} must be >= 0")
    return repetitions


def _build_grid(experiment, base, models, tasks, folds, methods, fractions, repetitions, targets, tuned) -> Grid:
    _check_choice("experiment", [experiment], EXPERIMENTS)
    folds = check_folds(list(range(base.n_folds)) if folds is None else list(folds), base.n_folds)
    grid = Grid()
    if experiment in ("segmentation", "all"):
        seg_models = list(models or SEGMENTATION_MODELS)
        seg_tasks = list(tasks or TASKS)
        _check_choice("--models", seg_models, SEGMENTATION_MODELS)
        _check_choice("--tasks", seg_tasks, TASKS)
        for task in seg_tasks:
            for model in seg_models:
                for fold in folds:
                    grid.add(segmentation_trial(base, model, task, fold, tuned))
    if experiment in ("transfer", "all"):
        transfer_methods = list(methods or TRANSFER_METHODS)
        label_fractions = [float(f) for f in (LABEL_FRACTIONS if fractions is None else fractions)]
        selected_tasks = list(tasks or TASKS)
        _check_choice("--tasks", selected_tasks, TASKS)
        transfer_tasks = [t for t in selected_tasks if t in TRANSFER_TASKS]
        qualitative_tasks = [t for t in selected_tasks if t in QUALITATIVE_TASKS]
        reps = list(range(base.n_folds)) if repetitions is None else list(repetitions)
        transfer_targets = list(targets or TARGET_DATASETS[:1])
        _check_choice("--methods", transfer_methods, TRANSFER_METHODS)
        for target in transfer_targets:
            check_target_name(target)
        bad = [f for f in label_fractions if not 0 <= f <= 100]
        if bad:
            raise UserError(f"--fractions: {bad} outside 0..100 (percent of the target training split)")
        check_repetitions(reps)
        for target in transfer_targets:
            for task in transfer_tasks:
                for method in transfer_methods:
                    for fraction in label_fractions:
                        for repetition in reps:
                            for spec in transfer_trials(base, method, task, target, repetition, fraction, tuned):
                                grid.add(spec)
            if "proposed" in transfer_methods and 0.0 in label_fractions and reps:
                for task in qualitative_tasks:
                    for spec in qualitative_trials(base, task, target, reps[0], tuned):
                        grid.add(spec)
    return grid


def config_of(spec_dict: dict) -> RunConfig:
    """Rebuild a RunConfig from the `config` dict of a serialised TrialSpec."""
    return RunConfig.from_dict(spec_dict["config"])


def spec_to_dict(spec: TrialSpec) -> dict:
    """A TrialSpec as plain data (what travels to a Ray trial and is stored with its outputs)."""
    return {
        "trial_id": spec.trial_id,
        "kind": spec.kind,
        "config": spec.config.to_dict(),
        "depends_on": list(spec.depends_on),
        "not_applicable": spec.not_applicable,
        "data": dict(spec.data),
    }


def spec_from_dict(values: dict) -> TrialSpec:
    return TrialSpec(
        values["trial_id"], values["kind"], config_of(values), tuple(values.get("depends_on", ())),
        values.get("not_applicable"), tuple(sorted((values.get("data") or {}).items())),
    )

