"""Tuning records (`cxrsweep tune` -> best-config.json) and the protocol that keeps test images
out of tuning. No Ray here: `cxrsweep run` reads and checks a record before Ray starts.

The protocol: a configuration is tuned per test fold (Table I) or per repetition (Table II), on
that run's own training and validation images; the tuning trials never predict a test image
(`engine.data.transfer.hide_test`: their "test" split is the validation split). A record holds one entry per
fold / repetition with its provenance: the data fingerprints, and the ids of every image the
tuning trained on and scored on. `cxrsweep run --config RECORD` applies an entry only to
the trials of the cell it tuned (same model and task, or same method, task and target; any
label fraction), each trial taking the entry of its own fold / repetition, and refuses a trial
whose test images the tuning used (`check_grid`). Dependencies a tuned cell reads (M_A, the
translator warm-up) are never changed by a transfer entry: tuning scored the cell with the
untuned ones, so the run uses those.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_io.splits import cv_split, repetition_splits
from errors import UserError
from protocol.config import RunConfig, check_values, read_json_file
from protocol.grid import (
    EPOCHS_FIELD,
    SEGMENTATION,
    TRANSLATOR_WARMUP,
    Grid,
    TrialSpec,
    segmentation_trial,
    transfer_trials,
)

RECORD_KIND = "cxrsweep-tuning"
RECORD_VERSION = 2
# The fields that name the cell an entry tuned, per experiment, and the one that says which
# fold / repetition (and so which test images) its provenance belongs to.
SCOPE_FIELDS = {"segmentation": ("experiment", "model", "task"),
                "transfer": ("experiment", "method", "task", "target")}
SPLIT_FIELD = {"segmentation": "fold", "transfer": "repetition"}
SHOWN_IDS = 8  # ids named in an error before "and N more"


# ---------------------------------------------------------------------------------------------
# Which images a trial reads.


def split_ids(spec: TrialSpec, ids: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """{"train" | "val" | "test": {dataset: [ids]}} of a Table I / II cell, from the splits the
    engines use (`ids`: each dataset's sorted case ids). A transfer cell is tested on the target
    only; its source test fold is not read."""
    cfg = spec.config

    def named(dataset: str, index: np.ndarray) -> list[str]:
        return [ids[dataset][i] for i in index]

    if spec.kind == SEGMENTATION:
        split = cv_split(len(ids["jsrt"]), cfg.fold, cfg.n_folds, cfg.seed)
        return {part: {"jsrt": named("jsrt", getattr(split, part))} for part in ("train", "val", "test")}
    source, target = repetition_splits(len(ids["jsrt"]), len(ids[cfg.target]), cfg.repetition, cfg.n_folds, cfg.seed)
    return {"train": {"jsrt": named("jsrt", source.train), cfg.target: named(cfg.target, target.train)},
            "val": {"jsrt": named("jsrt", source.val), cfg.target: named(cfg.target, target.val)},
            "test": {cfg.target: named(cfg.target, target.test)}}




def tuning_cell(base: RunConfig, model: str, task: str, fold: int, method: str | None, label_fraction: float,
                target: str, repetition: int) -> list[TrialSpec]:
    """The cell a search tunes at one fold (Table I) or repetition (Table II), then its
    dependencies; a cell that is not applicable or trains nothing is refused (UserError)."""
    if method in (None, "supervised"):
        return [segmentation_trial(base, model, task, fold)]
    specs = transfer_trials(base, method, task, target, repetition, label_fraction)
    if specs[0].not_applicable:
        raise UserError(f"--method {method} at --label-fraction {label_fraction:g}: {specs[0].not_applicable}")
    if EPOCHS_FIELD[method] is None:
        raise UserError(f"--method {method} trains nothing (M_A applied as it is): there is nothing to tune")
    return specs


# ---------------------------------------------------------------------------------------------
# The record.


@dataclass(frozen=True)
class TunedEntry:
    """The tuned values of one cell at one fold / repetition, with their provenance."""

    scope: dict[str, Any]  # SCOPE_FIELDS of the cell, plus its fold or repetition
    values: dict[str, Any]  # the tuned config fields
    trained: dict[str, list[str]]  # dataset -> ids of the images the tuning trials trained on
    scored: dict[str, list[str]]  # dataset -> ids of the images their score was computed on
    data: dict[str, str]  # dataset -> content fingerprint
    image_size: int
    cell: str = ""  # trial id of the tuned cell
    score: dict[str, Any] = field(default_factory=dict)
    trials: int = 0
    errors: int = 0

    @property
    def split(self) -> tuple[str, int]:
        name = SPLIT_FIELD[self.scope["experiment"]]
        return name, int(self.scope[name])

    def matches(self, cfg: RunConfig) -> bool:
        """Whether `cfg` belongs to the cell this entry tuned (at any fold / repetition)."""
        names = SCOPE_FIELDS[self.scope["experiment"]]
        return all(getattr(cfg, name) == self.scope[name] for name in names)

    def used(self) -> dict[str, set[str]]:
        return {name: set(self.trained.get(name, ())) | set(self.scored.get(name, ()))
                for name in set(self.trained) | set(self.scored)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TuningRecord:
    path: str
    entries: list[TunedEntry]

    def entry_for(self, cfg: RunConfig) -> TunedEntry | None:
        """The entry that configures a trial: the one of its own fold / repetition, or the only
        entry of its cell (whose provenance `check_grid` then checks); None outside every cell."""
        candidates = [e for e in self.entries if e.matches(cfg)]
        if not candidates:
            return None
        own = [e for e in candidates if getattr(cfg, e.split[0]) == e.split[1]]
        if own:
            return own[0]
        if len(candidates) == 1:
            return candidates[0]
        name = candidates[0].split[0]
        raise UserError(f"{self.path}: tunes {_scope_text(candidates[0])} for {name}s "
                        f"{', '.join(str(e.split[1]) for e in candidates)}, and {name} {getattr(cfg, name)} has "
                        f"no tuned config; tune it (`cxrsweep tune --{name}s ...`) or leave it out of the run")

    def adjust(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with the tuned values of its entry (unchanged outside the tuned cells): the hook
        `protocol.grid.build_grid(..., tuned=...)` applies to every Table I / II cell it makes."""
        entry = self.entry_for(cfg)
        return cfg if entry is None else cfg.replace(**entry.values)

    def to_dict(self) -> dict:
        return {"kind": RECORD_KIND, "version": RECORD_VERSION, "entries": [e.to_dict() for e in self.entries],
                "protocol": "tuned per fold / repetition on that run's training and validation images; tuning "
                            "trials predict no test image; `cxrsweep run --config` refuses a trial whose "
                            "test images the tuning trained or scored on"}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _scope_text(entry: TunedEntry) -> str:
    return " ".join(f"{k} {entry.scope[k]}" for k in SCOPE_FIELDS[entry.scope["experiment"]] if k != "experiment")


def is_tuning_record(values: Any) -> bool:
    """A record written by `cxrsweep tune` (this version's, or an older one without provenance)."""
    return isinstance(values, dict) and (values.get("kind") == RECORD_KIND
                                         or {"config", "cell", "score"} <= set(values))


def read_record(path: str | Path) -> TuningRecord:
    return record_from(path, read_json_file(path, "tuning record"))


def record_from(path: str | Path, values: Any) -> TuningRecord:
    """The record in `values`, read from `path`."""
    if not is_tuning_record(values):
        raise UserError(f"{path}: not a tuning record written by `cxrsweep tune`")
    if values.get("version") != RECORD_VERSION:
        raise UserError(f"{path}: written by an older `cxrsweep tune` that did not record which images it trained "
                        "and scored on, so it cannot be checked against the test images of a run; tune again")
    try:
        entries = [TunedEntry(**entry) for entry in values["entries"]]
        origins = [f"{path}, the entry of {_scope_text(e)} {e.split[0]} {e.split[1]}" for e in entries]
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: malformed tuning record ({type(exc).__name__}: {exc})") from None
    # Each entry's values checked as --set checks them, before any of them configures a trial.
    entries = [dataclasses.replace(e, values=check_values(e.values, origin)) for e, origin in zip(entries, origins)]
    return TuningRecord(str(path), entries)


# ---------------------------------------------------------------------------------------------
# The check `cxrsweep run --config` makes before Ray starts.


def check_grid(record: TuningRecord, grid: Grid, datasets: dict, say=print) -> None:
    """Refuse (UserError) when a trial of `grid` that a tuned entry configures has a test image
    that the tuning trained or scored on, naming the trial and the images."""
    ids = {name: list(dataset.ids) for name, dataset in datasets.items()}
    fingerprints = {name: dataset.fingerprint for name, dataset in datasets.items()}
    problems, warned = [], set()
    for spec in grid.runnable():
        if spec.kind == TRANSLATOR_WARMUP:
            continue  # no test split
        entry = record.entry_for(spec.config)
        if entry is None:
            continue
        for name, fingerprint in entry.data.items():
            if name in fingerprints and fingerprints[name] != fingerprint and name not in warned:
                warned.add(name)
                say(f"[sweep] note: {record.path} was tuned on other {name} data ({fingerprint}; now "
                    f"{fingerprints[name]}); its test-image check uses the case ids")
        used = entry.used()
        for name, test_ids in split_ids(spec, ids)["test"].items():
            overlap = sorted(set(test_ids) & used.get(name, set()))
            if overlap:
                scored = sorted(set(overlap) & set(entry.scored.get(name, ())))
                shown = ", ".join(overlap[:SHOWN_IDS]) + (f" and {len(overlap) - SHOWN_IDS} more"
                                                         if len(overlap) > SHOWN_IDS else "")
                split_name, split_value = entry.split
                problems.append(f"{spec.trial_id}: {len(overlap)} of its {len(test_ids)} {name} test images were "
                                f"used to tune the config of {split_name} {split_value} in {record.path} "
                                f"({len(scored)} scored on, {len(overlap) - len(scored)} trained on): {shown}")
    if problems:
        raise UserError("tuned config refused, it would configure trials with their own test images:\n  "
                        + "\n  ".join(problems)
                        + "\ntune each fold / repetition on its own (`cxrsweep tune --folds 0,1,2,3,4` or "
                           "`--repetitions ...`) and run each with its own entry")


def provenance(spec: TrialSpec, datasets: dict) -> dict[str, Any]:
    """What a tuning of `spec` trains and scores on: `trained` (every training image of the cell,
    labelled or not) and `scored` (the validation images its score is computed on: the second-
    validation fold, or the target validation split when the cell keeps target labels, else the
    source validation split through A -> B -> A)."""
    ids = {name: list(dataset.ids) for name, dataset in datasets.items()}
    parts = split_ids(spec, ids)
    cfg = spec.config
    if spec.kind == SEGMENTATION:
        scored = parts["val"]
    else:
        target_labelled = cfg.label_fraction and cfg.task in datasets[cfg.target].masks
        scored = {cfg.target: parts["val"][cfg.target]} if target_labelled else {"jsrt": parts["val"]["jsrt"]}
    return {"trained": parts["train"], "scored": scored,
            "data": {name: datasets[name].fingerprint for name in spec.datasets}, "image_size": cfg.image_size}


def scope_of(spec: TrialSpec) -> dict[str, Any]:
    experiment = spec.config.experiment
    names = (*SCOPE_FIELDS[experiment], SPLIT_FIELD[experiment])
    return {name: getattr(spec.config, name) for name in names}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON object of config fields (applied to every run; a `cxrsweep tune` record is
    refused here: only `cxrsweep run --config` applies it, entry by entry)."""
    data = read_json_file(path)
    if is_tuning_record(data):
        # Its entries belong to particular folds or repetitions, and only `cxrsweep run` checks
        # them against each run's test images.
        raise UserError(f"{path}: a tuning record written by `cxrsweep tune`; apply it with `cxrsweep run "
                        "--config FILE`, which gives each fold / repetition its own entry and refuses a run "
                        "whose test images the tuning used")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of config fields")
    return check_values(data, path)
