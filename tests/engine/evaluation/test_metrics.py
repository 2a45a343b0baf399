"""Jaccard and Dice on hand-made masks whose answers can be counted by eye."""
import numpy as np
import pytest
import torch

from engine.evaluation.metrics import dice, dice_per_image, jaccard, jaccard_per_image


def square(size, top, left, side):
    mask = np.zeros((size, size), np.uint8)
    mask[top:top + side, left:left + side] = 1
    return mask


def test_identical_masks_score_one():
    mask = square(8, 2, 2, 4)
    assert jaccard(mask, mask) == 1.0
    assert dice(mask, mask) == 1.0


def test_partial_overlap_counts_pixels():
    # Two 4x4 squares shifted by 2 columns: 8 shared pixels, 24 in the union.
    truth, prediction = square(8, 0, 0, 4), square(8, 0, 2, 4)
    assert jaccard(prediction, truth) == pytest.approx(8 / 24)
    assert dice(prediction, truth) == pytest.approx(2 * 8 / 32)


def test_disjoint_masks_score_zero():
    truth, prediction = square(8, 0, 0, 2), square(8, 5, 5, 2)
    assert jaccard(prediction, truth) == 0.0
    assert dice(prediction, truth) == 0.0


def test_both_empty_is_perfect():
    empty = np.zeros((6, 6), np.uint8)
    assert jaccard(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0


@pytest.mark.parametrize("empty_side", ["prediction", "truth"])
def test_one_side_empty_scores_zero(empty_side):
    empty, full = np.zeros((6, 6), np.uint8), square(6, 1, 1, 3)
    prediction, truth = (empty, full) if empty_side == "prediction" else (full, empty)
    assert jaccard(prediction, truth) == 0.0
    assert dice(prediction, truth) == 0.0


def test_dice_and_jaccard_are_related():
    rng = np.random.default_rng(1)
    prediction = rng.integers(0, 2, (5, 16, 16)).astype(np.uint8)
    truth = rng.integers(0, 2, (5, 16, 16)).astype(np.uint8)
    j, d = jaccard_per_image(prediction, truth), dice_per_image(prediction, truth)
    np.testing.assert_allclose(d, 2 * j / (1 + j))


def test_per_image_stack_scores_each_image():
    truth = np.stack([square(8, 0, 0, 4), np.zeros((8, 8), np.uint8), square(8, 0, 0, 4)])
    prediction = np.stack([square(8, 0, 0, 4), np.zeros((8, 8), np.uint8), square(8, 0, 2, 4)])
    np.testing.assert_allclose(jaccard_per_image(prediction, truth), [1.0, 1.0, 8 / 24])


def test_accepts_tensors_and_booleans():
    truth = torch.from_numpy(square(8, 0, 0, 4).astype(bool))
    assert jaccard(truth, truth.numpy().astype(np.uint8)) == 1.0


def test_rejects_shape_mismatch_and_non_binary():
    with pytest.raises(ValueError, match="shape"):
        jaccard(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="binary"):
        dice(np.full((4, 4), 2, np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="per_image"):
        jaccard(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8))
