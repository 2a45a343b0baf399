"""Per-image overlap metrics of the foreground.

Convention for empty masks: when truth and prediction are both empty the prediction is
perfect, so Jaccard and Dice are 1.0; when exactly one is empty they are 0.0. This keeps a
"nothing there, nothing predicted" image from turning a mean into NaN.
"""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_bool(mask: ArrayLike, name: str) -> np.ndarray:
    """A binary mask (values in {0, 1} or bool) as a bool array; anything else is an error naming `name`."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name}: expected a binary mask with values in {{0, 1}}")
        mask = mask.astype(bool)
    return mask


def _counts(prediction: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection, |prediction|, |truth| per image over the trailing two axes."""
    pred = as_bool(prediction, "prediction")
    true = as_bool(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    if pred.ndim < 2:
        raise ValueError(f"masks must be at least 2-D (H, W), got shape {pred.shape}")
    axes = (-2, -1)
    inter = np.logical_and(pred, true).sum(axis=axes, dtype=np.int64)
    return inter, pred.sum(axis=axes, dtype=np.int64), true.sum(axis=axes, dtype=np.int64)


def jaccard_from_counts(inter: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """Jaccard from per-image pixel counts (intersection, |prediction|, |truth|); both empty -> 1.0."""
    union = n_pred + n_true - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 1.0, inter / np.maximum(union, 1)).astype(np.float64)


def dice_from_counts(inter: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    """Dice from per-image pixel counts (intersection, |prediction|, |truth|); both empty -> 1.0."""
    total = n_pred + n_true
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1)).astype(np.float64)


def jaccard_per_image(prediction: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """Jaccard (IoU) of each mask in a [..., H, W] stack; both empty -> 1.0."""
    return jaccard_from_counts(*_counts(prediction, truth))


def dice_per_image(prediction: ArrayLike, truth: ArrayLike) -> np.ndarray:
    """Dice (F1) of each mask in a [..., H, W] stack; both empty -> 1.0."""
    return dice_from_counts(*_counts(prediction, truth))


def jaccard(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Jaccard of one [H, W] mask pair."""
    return float(_single(jaccard_per_image(prediction, truth)))


def dice(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Dice of one [H, W] mask pair."""
    return float(_single(dice_per_image(prediction, truth)))


def _single(values: np.ndarray) -> np.ndarray:
    if values.ndim != 0:
        raise ValueError(f"expected one [H, W] mask pair, got a stack of shape {values.shape}; use *_per_image")
    return values
