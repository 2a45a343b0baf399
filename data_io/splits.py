"""Deterministic splits: JSRT cross-validation folds, 60/20/20 transfer splits, nested label fractions.

All splits are index arrays into a `CachedDataset` (whose ids are sorted), so the same seed
gives the same split on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from errors import UserError

TRANSFER_FRACTIONS = (0.6, 0.2, 0.2)  # train / validation / test


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # int indices into the dataset
    val: np.ndarray  # "second validation" fold for CV; the validation 20 % for transfer
    test: np.ndarray


def _check_count(n_items: int, minimum: int, what: str) -> None:
    if int(n_items) != n_items or n_items < minimum:
        raise UserError(f"{what} needs at least {minimum} items, got {n_items}")


def _permutation(n_items: int, *seed: int) -> np.ndarray:
    return np.random.default_rng(list(seed)).permutation(n_items)


def cv_folds(n_items: int, n_folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Partition range(n_items) into `n_folds` disjoint folds of near-equal size (each sorted)."""
    if n_folds < 3:
        raise ValueError(f"n_folds must be at least 3 (test, second validation, training), got {n_folds}")
    _check_count(n_items, n_folds, f"{n_folds}-fold cross-validation")
    order = _permutation(n_items, seed, n_folds)
    return [np.sort(fold) for fold in np.array_split(order, n_folds)]


def cv_split(n_items: int, test_fold: int, n_folds: int = 5, seed: int = 0) -> Split:
    """Test on fold `test_fold`; the next fold picks the best epoch (paper §V-B); train on the rest."""
    if not 0 <= test_fold < n_folds:
        raise ValueError(f"test_fold must be in 0..{n_folds - 1}, got {test_fold}")
    folds = cv_folds(n_items, n_folds, seed)
    val_fold = (test_fold + 1) % n_folds
    train = np.sort(np.concatenate([f for i, f in enumerate(folds) if i not in (test_fold, val_fold)]))
    return Split(train=train, val=folds[val_fold], test=folds[test_fold])


def source_transfer_split(n_items: int, repetition: int, n_folds: int = 5, seed: int = 0) -> Split:
    """The JSRT side of transfer repetition `repetition`: the CV split whose test fold is `repetition % n_folds`."""
    return cv_split(n_items, repetition % n_folds, n_folds, seed)


def transfer_split(n_items: int, repetition: int, seed: int = 0) -> Split:
    """A 60/20/20 train/validation/test split of a target set; each repetition reshuffles."""
    _check_count(n_items, 3, "a 60/20/20 transfer split")
    if repetition < 0:
        raise ValueError(f"repetition must be >= 0, got {repetition}")
    order = _permutation(n_items, seed, 60_20_20, repetition)
    n_val = max(1, round(n_items * TRANSFER_FRACTIONS[1]))
    n_test = max(1, round(n_items * TRANSFER_FRACTIONS[2]))
    n_train = n_items - n_val - n_test
    return Split(
        train=np.sort(order[:n_train]),
        val=np.sort(order[n_train : n_train + n_val]),
        test=np.sort(order[n_train + n_val :]),
    )


def repetition_splits(n_source: int, n_target: int, repetition: int, n_folds: int = 5,
                      seed: int = 0) -> tuple[Split, Split]:
    """(source Split, target Split) of a Table II repetition: JSRT fold `repetition % n_folds`
    (so the segmentation run of that fold is its M_A) and the target's 60/20/20 split."""
    return (source_transfer_split(n_source, repetition, n_folds=n_folds, seed=seed),
            transfer_split(n_target, repetition, seed=seed))


def label_subset(train: np.ndarray, fraction_percent: float, seed: int = 0) -> np.ndarray:
    """The labelled part of a target training split, nested across fractions.

    One seeded order of the training images is fixed and each fraction takes a prefix of it, so
    every smaller fraction is a subset of every larger one. 0 % keeps no labels; any fraction
    above 0 keeps at least one image.
    """
    if not 0 <= fraction_percent <= 100:
        raise ValueError(f"label fraction must be in 0..100 percent, got {fraction_percent}")
    members = np.sort(np.asarray(train, dtype=np.int64))
    if fraction_percent == 0 or len(members) == 0:
        return members[:0]
    order = members[_permutation(len(members), seed, 1_25)]
    count = max(1, round(len(members) * fraction_percent / 100))
    return np.sort(order[:count])
