"""Split invariants: disjoint, complete, deterministic, nested label fractions."""
from __future__ import annotations

import numpy as np
import pytest

from data_io.splits import cv_folds, cv_split, label_subset, source_transfer_split, transfer_split

PAPER_FRACTIONS = (0.0, 1.25, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0)


@pytest.mark.parametrize("n_items", [247, 40, 5])
def test_cv_folds_partition_everything(n_items):
    folds = cv_folds(n_items, 5, seed=0)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(n_items))  # complete and disjoint
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1


def test_cv_split_uses_the_next_fold_as_second_validation():
    folds = cv_folds(247, 5, seed=0)
    tests_seen = []
    for test_fold in range(5):
        split = cv_split(247, test_fold, 5, seed=0)
        np.testing.assert_array_equal(split.test, folds[test_fold])
        np.testing.assert_array_equal(split.val, folds[(test_fold + 1) % 5])
        parts = [split.train, split.val, split.test]
        assert sum(len(p) for p in parts) == 247
        assert len(np.unique(np.concatenate(parts))) == 247
        assert len(split.train) == sum(len(folds[i]) for i in range(5) if i not in (test_fold, (test_fold + 1) % 5))
        tests_seen.append(split.test)
    # Every image is tested exactly once across the five runs.
    assert sorted(np.concatenate(tests_seen).tolist()) == list(range(247))


def test_splits_are_deterministic_and_seeded():
    assert all(np.array_equal(a, b) for a, b in zip(cv_folds(100, 5, 7), cv_folds(100, 5, 7)))
    assert not all(np.array_equal(a, b) for a, b in zip(cv_folds(100, 5, 7), cv_folds(100, 5, 8)))
    first, again = transfer_split(138, 2, seed=1), transfer_split(138, 2, seed=1)
    np.testing.assert_array_equal(first.train, again.train)
    assert not np.array_equal(transfer_split(138, 3, seed=1).test, first.test)


@pytest.mark.parametrize("n_items", [138, 30, 3])
def test_transfer_split_is_60_20_20(n_items):
    split = transfer_split(n_items, repetition=0, seed=0)
    parts = [split.train, split.val, split.test]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n_items))
    assert all(len(p) >= 1 for p in parts)
    assert abs(len(split.train) - 0.6 * n_items) <= 1
    assert abs(len(split.test) - 0.2 * n_items) <= 1


def test_source_side_of_a_repetition_is_a_cv_fold():
    for repetition in range(7):
        source = source_transfer_split(247, repetition, 5, seed=0)
        np.testing.assert_array_equal(source.test, cv_split(247, repetition % 5, 5, seed=0).test)


def test_label_fractions_are_nested_and_keep_at_least_one():
    train = transfer_split(138, 0, seed=0).train
    subsets = [label_subset(train, fraction, seed=0) for fraction in PAPER_FRACTIONS]
    assert len(subsets[0]) == 0
    assert all(len(s) >= 1 for s in subsets[1:])
    for smaller, larger in zip(subsets, subsets[1:]):
        assert set(smaller.tolist()) <= set(larger.tolist())
        assert len(smaller) <= len(larger)
    np.testing.assert_array_equal(subsets[-1], np.sort(train))
    assert set(subsets[3].tolist()) <= set(train.tolist())
    np.testing.assert_array_equal(label_subset(train, 10.0, seed=0), subsets[4])
    assert abs(len(subsets[5]) - 0.2 * len(train)) <= 1


def test_tiny_training_split_still_gets_one_label():
    assert len(label_subset(np.array([4, 9, 2]), 1.25, seed=0)) == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cv_folds(3, 5), "at least 5"),
        (lambda: cv_split(50, 5, 5), "test_fold"),
        (lambda: transfer_split(2, 0), "at least 3"),
        (lambda: label_subset(np.arange(10), 120.0), "0..100"),
        (lambda: label_subset(np.arange(10), -1.0), "0..100"),
    ],
)
def test_bad_split_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
