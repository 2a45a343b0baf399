"""The data of a sweep's trials, read on the driver: which datasets a set of trials needs, the
one image size and content-crop setting they share, the flags that must name them, and their
cached arrays (read or built once, before Ray starts; trials get them through the object store,
never by path). What was read, by content (`data_identity`), is part of every trial's identity.
No Ray here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from data_io.datasets import TARGET_DATASETS
from errors import UserError
from protocol.collect import CurrentData
from protocol.grid import TrialSpec

log = logging.getLogger(__name__)


@dataclass
class DataPaths:
    jsrt: str | None = None
    scr: str | None = None
    montgomery: str | None = None
    shenzhen: str | None = None
    cache_dir: str | None = None
    target_dirs: dict[str, str] = field(default_factory=dict)  # --target-dir NAME=DIR, any target

    def target_dir(self, name: str) -> str | None:
        return self.target_dirs.get(name) or (getattr(self, name) if name in TARGET_DATASETS else None)


def needed_datasets(specs: Iterable[TrialSpec]) -> set[str]:
    return {"jsrt"}.union(*(s.datasets for s in specs))


def check_data_flags(names: set[str], paths: DataPaths) -> None:
    """Fail before Ray starts when a dataset the trials need was not given."""
    missing = [flag for flag, value in (("--jsrt", paths.jsrt), ("--scr", paths.scr)) if not value]
    if missing:
        raise UserError(f"{' and '.join(missing)} required: every trial reads JSRT images and SCR masks")
    for name in sorted(names - {"jsrt"}):
        if not paths.target_dir(name):
            flag = f"--{name} DIR or --target-dir {name}=DIR" if name in TARGET_DATASETS else f"--target-dir {name}=DIR"
            raise UserError(f"{flag} required: the grid has transfer trials with target {name}")


def data_settings(specs: Sequence[TrialSpec]) -> tuple[int, bool]:
    """The one image size and content-crop setting that `specs` share: what their datasets are
    prepared at ((0, True) for none). A mix is refused: one sweep per setting."""
    sizes = {spec.config.image_size for spec in specs}
    if len(sizes) > 1:
        raise UserError(f"the trials mix image sizes {sorted(sizes)}; run one sweep per size")
    crops = {spec.config.crop_borders for spec in specs}
    if len(crops) > 1:
        raise UserError("the trials mix crop_borders true and false; run one sweep per setting")
    return (sizes.pop() if sizes else 0), (crops.pop() if crops else True)


def load_trial_datasets(specs: Sequence[TrialSpec], paths: DataPaths) -> dict[str, Any]:
    """The datasets `specs` read, prepared at their shared settings (`data_settings`)."""
    return load_datasets(needed_datasets(specs), paths, *data_settings(specs))


def load_datasets(names: set[str], paths: DataPaths, image_size: int, crop_borders: bool = True) -> dict[str, Any]:
    """The cached arrays of each dataset the trials need, keyed by dataset name."""
    from data_io.cache import load_jsrt, load_target

    check_data_flags(names, paths)
    datasets: dict[str, Any] = {}
    for name in sorted(names):
        if name == "jsrt":
            datasets[name] = load_jsrt(paths.jsrt, paths.scr, image_size, cache_dir=paths.cache_dir,
                                       crop_borders=crop_borders)
        else:
            datasets[name] = load_target(name, paths.target_dir(name), image_size, cache_dir=paths.cache_dir,
                                         crop_borders=crop_borders)
        log.info("data: %s, %d cases at %d px (fingerprint %s)", name, len(datasets[name].ids), image_size,
                 datasets[name].fingerprint)
    return datasets


def data_identity(datasets: dict[str, Any], image_size: int) -> CurrentData:
    """What the trials of this sweep read, by content: a finished trial is reused only for it."""
    return CurrentData(image_size, {name: dataset.fingerprint for name, dataset in datasets.items()})
