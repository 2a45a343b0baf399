"""Validation and test scores computed where the network runs.

A split's images, its truth (the whole frame when the images are content crops) and the samples
that place a cropped prediction back into its frame are moved to the device once; a pass
predicts in large batches, places the predictions of trimmed images, counts pixels per image
and hands the host one [3, N] array of counts: one host sync per pass, whatever the number of
images or batches.

The numbers are those of `engine.data.segmentation.score_per_image` applied to
`engine.runtime.prediction.predict_masks` (numpy, one image at a time), which stay the reference:
the same argmax, the same float32 interpolation in the same order (`data_io.preprocess.frame_axis`
gives both the samples), the same integer counts and formulas (`engine.evaluation.metrics`).
tests/engine/evaluation/test_scoring.py asserts equality on phantoms with and without content crops.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from engine.data.segmentation import FullFrame
from engine.evaluation.metrics import as_bool, dice_from_counts, jaccard_from_counts
from engine.runtime.device import as_batch
from engine.runtime.prediction import logits_batches


class FramePlacement:
    """`data_io.preprocess.mask_to_full_frame` for every trimmed image of a split at once, at the
    split's own size: per image and axis, the source pixels and weight of each output pixel and
    whether it lies inside the crop, as tensors on the device. Untrimmed images are left as they
    are (mask_to_full_frame returns them unchanged)."""

    def __init__(self, frame: FullFrame, crop_side: tuple[int, int], device: torch.device):
        from data_io.preprocess import CropBox, frame_axis

        size = tuple(frame.masks.shape[1:])
        if size != tuple(crop_side):
            raise ValueError(f"whole-frame masks {size} must have the predictions' size {tuple(crop_side)}")
        trimmed, rows, cols = [], [], []
        for index, row in enumerate(frame.crop_boxes):
            crop = CropBox.from_row(row)
            if not crop.trimmed:
                continue
            trimmed.append(index)
            rows.append(_padded(frame_axis(size[0], crop.height, crop.top, crop.bottom, crop_side[0]), size[0]))
            cols.append(_padded(frame_axis(size[1], crop.width, crop.left, crop.right, crop_side[1]), size[1]))
        self.index = torch.tensor(trimmed, dtype=torch.long, device=device)
        # (lower, upper, weight, inside), each [M, H] for the rows and [M, W] for the columns.
        self.rows = [torch.from_numpy(np.stack(part)).to(device) for part in zip(*rows)]
        self.cols = [torch.from_numpy(np.stack(part)).to(device) for part in zip(*cols)]

    def apply(self, predictions: Tensor) -> Tensor:
        """uint8 [N, S, S] predictions on the cropped images -> uint8 [N, S, S] in the whole frame."""
        if len(self.index) == 0:
            return predictions
        values = predictions.index_select(0, self.index).float()
        (row_lower, row_upper, row_weight, row_inside), (col_lower, col_upper, col_weight, col_inside) = \
            self.rows, self.cols
        m, height, width = len(self.index), row_lower.shape[1], col_lower.shape[1]
        # Rows first, then columns, each as lower * (1 - w) + upper * w in float32: the order of
        # operations of mask_to_full_frame, so the thresholded result is the same bit for bit.
        shape = (m, height, values.shape[2])
        weight = row_weight[:, :, None]
        values = (values.gather(1, row_lower[:, :, None].expand(shape)) * (1 - weight)
                  + values.gather(1, row_upper[:, :, None].expand(shape)) * weight)
        shape = (m, height, width)
        weight = col_weight[:, None, :]
        values = (values.gather(2, col_lower[:, None, :].expand(shape)) * (1 - weight)
                  + values.gather(2, col_upper[:, None, :].expand(shape)) * weight)
        placed = (values >= 0.5) & row_inside[:, :, None] & col_inside[:, None, :]
        out = predictions.clone()
        out[self.index] = placed.to(torch.uint8)
        return out


def _padded(samples, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An axis's samples over all `count` output pixels (outside the crop: pixel 0, weight 0, not inside)."""
    lower, upper = np.zeros(count, np.int64), np.zeros(count, np.int64)
    weight, inside = np.zeros(count, np.float32), np.zeros(count, bool)
    window = slice(samples.first, samples.last)
    lower[window], upper[window], weight[window], inside[window] = samples.lower, samples.upper, samples.weight, True
    return lower, upper, weight, inside


class SplitScorer:
    """One split on `device`: its images, the truth its scores are computed against (the whole
    frame when the images are content crops: `frame`) and the placement into that frame."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, frame: FullFrame | None, device: torch.device):
        self.device = device
        self.images = as_batch(images, device)
        truth = masks if frame is None else frame.masks
        self.truth = torch.from_numpy(as_bool(truth, "truth")).to(device)
        self.truth_counts = self.truth.sum((-2, -1))
        self.placement = FramePlacement(frame, images.shape[1:], device) if frame is not None else None

    @torch.no_grad()
    def predict(self, model: nn.Module) -> Tensor:
        """Foreground masks uint8 [N, S, S], left on the device (model put in eval mode)."""
        out = [logits.argmax(dim=1).to(torch.uint8) for logits in logits_batches(model, self.images, self.device)]
        if not out:
            return torch.zeros((0, *self.images.shape[2:]), dtype=torch.uint8, device=self.device)
        return torch.cat(out)

    def score(self, predictions: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(Jaccard, Dice) per image of device predictions on the split's (cropped) images."""
        if self.placement is not None:
            predictions = self.placement.apply(predictions)
        predicted = predictions.bool()
        counts = torch.stack([(predicted & self.truth).sum((-2, -1)), predicted.sum((-2, -1)), self.truth_counts])
        inter, n_pred, n_true = counts.cpu().numpy()  # the pass's one host sync
        return jaccard_from_counts(inter, n_pred, n_true), dice_from_counts(inter, n_pred, n_true)

    def __call__(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        return self.score(self.predict(model))


def score_split(model: nn.Module, images: np.ndarray, masks: np.ndarray, frame: FullFrame | None,
                device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(Jaccard, Dice) per image of `model` on a split (a validation pass)."""
    return SplitScorer(images, masks, frame, device)(model)


def predict_and_score(model: nn.Module, images: np.ndarray, masks: np.ndarray | None, frame: FullFrame | None,
                      device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predictions uint8 [N, S, S] on the host, Jaccard, Dice) of a test split, for its
    images.parquet and overlays; without truth (`masks` None) the scores are empty."""
    if masks is None:
        from engine.runtime.prediction import predict_masks

        return predict_masks(model, images, device), np.zeros(0), np.zeros(0)
    scorer = SplitScorer(images, masks, frame, device)
    predictions = scorer.predict(model)
    jaccards, dices = scorer.score(predictions)
    return predictions.cpu().numpy(), jaccards, dices
