"""The arrays one supervised run trains, validates and tests on, and how they are scored."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from data_io.preprocess import NORMALISATION
from engine.evaluation.metrics import dice_per_image, jaccard_per_image
from models.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from data_io.cache import CachedDataset
    from protocol.config import RunConfig


# What the per-image pipeline does to intensities (data_io.preprocess.NORMALISATION);
# recorded in checkpoints so that `cxrsweep segment` prepares new images the same way.
PER_IMAGE_STANDARDISATION = NORMALISATION


@dataclass
class FullFrame:
    """Where each image's content crop lies in its whole frame, and the truth of that whole
    frame at S x S (data_io.preprocess). Predictions, made on the cropped images, are scored
    after mapping them back, so lung that a crop cut away counts as missed."""

    masks: np.ndarray  # uint8 [N, S, S], whole frame
    crop_boxes: np.ndarray  # int [N, 6]: data_io.preprocess.CropBox rows

    def __post_init__(self) -> None:
        if len(self.masks) != len(self.crop_boxes):
            raise ValueError(f"{len(self.masks)} whole-frame masks for {len(self.crop_boxes)} crop boxes")

    @classmethod
    def of(cls, dataset: "CachedDataset", task: str, index: np.ndarray) -> "FullFrame | None":
        """The whole frame of `dataset`'s images `index`; None when none of them was trimmed
        (the cropped frame is then the whole frame)."""
        from data_io.preprocess import any_trimmed

        boxes = dataset.crop_boxes[index]
        if not any_trimmed(boxes):
            return None
        return cls(masks=dataset.full_masks[task][index], crop_boxes=boxes)

    def take(self, index: np.ndarray) -> "FullFrame":
        """The frames of the images at positions `index` of this one."""
        return FullFrame(masks=self.masks[index], crop_boxes=self.crop_boxes[index])

    def to_full_frame(self, predictions: np.ndarray) -> np.ndarray:
        """Masks predicted on the cropped images [N, S, S] -> the whole frame at S x S."""
        from data_io.preprocess import CropBox, mask_to_full_frame

        size = predictions.shape[1:]
        return np.stack([mask_to_full_frame(prediction, CropBox.from_row(row), size)
                         for prediction, row in zip(predictions, self.crop_boxes)]) if len(predictions) else predictions


def score_per_image(predictions: np.ndarray, masks: np.ndarray,
                    frame: FullFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Jaccard, Dice) per image of predictions on the cropped images; in the whole frame when
    the images were cropped (`frame`), else against `masks`."""
    if frame is not None:
        predictions, masks = frame.to_full_frame(predictions), frame.masks
    return jaccard_per_image(predictions, masks), dice_per_image(predictions, masks)


@dataclass
class SegmentationData:
    """Images float32 [N, S, S] (already normalised), masks uint8 [N, S, S] in {0, 1}, ids per image.

    When the images are content crops (`crop_borders`), the masks are in the cropped frame (what
    training fits) and `val_frame` / `test_frame` hold the whole frame, where scores are computed.
    """

    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    test_images: np.ndarray
    test_masks: np.ndarray
    test_ids: list[str]
    task: str
    val_ids: list[str] | None = None
    train_ids: list[str] | None = None
    dataset: str = "arrays"
    normalisation: str = PER_IMAGE_STANDARDISATION
    crop_borders: bool = False  # whether the images are content crops (recorded in checkpoints)
    val_frame: FullFrame | None = None  # None: nothing trimmed, score against val_masks
    test_frame: FullFrame | None = None
    # dataset name -> content fingerprint (CachedDataset.fingerprint); recorded in checkpoints
    fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("train", "val", "test"):
            images, masks = getattr(self, f"{part}_images"), getattr(self, f"{part}_masks")
            if images.ndim != 3 or images.shape != masks.shape:
                raise ValueError(
                    f"{self.dataset}: {part} images {images.shape} and masks {masks.shape} must both be [N, S, S]")
            if images.shape[1] != images.shape[2]:
                raise ValueError(f"{self.dataset}: {part} images must be square, got {images.shape[1:]}")
        sizes = {getattr(self, f"{p}_images").shape[1]
                 for p in ("train", "val", "test") if len(getattr(self, f"{p}_images"))}
        if len(sizes) > 1:
            raise ValueError(f"{self.dataset}: train/val/test image sizes differ: {sorted(sizes)}")
        if len(self.train_images) == 0:
            raise ValueError(f"{self.dataset}: no training images")
        if len(self.val_images) == 0:
            raise ValueError(f"{self.dataset}: no validation images (the best epoch is chosen on them)")
        if len(self.test_ids) != len(self.test_images):
            raise ValueError(f"{self.dataset}: {len(self.test_ids)} test ids for {len(self.test_images)} test images")
        for part in ("val", "test"):
            frame = getattr(self, f"{part}_frame")
            if frame is not None and frame.masks.shape != getattr(self, f"{part}_masks").shape:
                raise ValueError(f"{self.dataset}: {part} whole-frame masks {frame.masks.shape} do not match "
                                 f"the {part} masks {getattr(self, f'{part}_masks').shape}")

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def foreground_fraction(self) -> float:
        """Foreground share of the labelled training pixels (pseudo-labels may leave some
        unlabelled: IGNORE_INDEX)."""
        return labelled_foreground_share(self.train_masks)


def labelled_foreground_share(masks: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Share of foreground (1) among the labelled pixels of `masks` (IGNORE_INDEX excluded), over
    all of them or along `axis`."""
    labelled = np.count_nonzero(masks != IGNORE_INDEX, axis=axis)
    share = np.count_nonzero(masks == 1, axis=axis) / np.maximum(labelled, 1)
    return float(share) if axis is None else share


def segmentation_data(cfg: "RunConfig", dataset: "CachedDataset") -> SegmentationData:
    """Train / second-validation / test arrays of `cfg.task` for JSRT cross-validation fold `cfg.fold`."""
    from data_io.splits import cv_split

    if cfg.task not in dataset.masks:
        raise ValueError(
            f"{dataset.name}: no {cfg.task!r} masks in this dataset (it labels {', '.join(sorted(dataset.masks))})")
    check_preprocessing(cfg, dataset)
    if not 0 <= cfg.fold < cfg.n_folds:
        raise ValueError(f"fold {cfg.fold} is outside 0..{cfg.n_folds - 1}")
    split = cv_split(len(dataset.ids), test_fold=cfg.fold, n_folds=cfg.n_folds, seed=cfg.seed)
    masks = dataset.masks[cfg.task]

    def ids(index: np.ndarray) -> list[str]:
        return [dataset.ids[i] for i in index]

    return SegmentationData(
        train_images=dataset.images[split.train], train_masks=masks[split.train],
        val_images=dataset.images[split.val], val_masks=masks[split.val],
        test_images=dataset.images[split.test], test_masks=masks[split.test],
        test_ids=ids(split.test), val_ids=ids(split.val), train_ids=ids(split.train),
        task=cfg.task, dataset=dataset.name, crop_borders=dataset.crop_borders,
        val_frame=FullFrame.of(dataset, cfg.task, split.val), test_frame=FullFrame.of(dataset, cfg.task, split.test),
        fingerprints={dataset.name: dataset.fingerprint},
    )


def check_preprocessing(cfg: "RunConfig", dataset: "CachedDataset") -> None:
    """The cached arrays must be the ones the config asks for (size, content crop)."""
    if dataset.image_size != cfg.image_size:
        raise ValueError(f"{dataset.name}: cached at {dataset.image_size} px "
                         f"but the config asks for {cfg.image_size} px")
    if dataset.crop_borders != cfg.crop_borders:
        raise ValueError(f"{dataset.name}: cached with crop_borders={str(dataset.crop_borders).lower()} but the "
                         f"config asks for crop_borders={str(cfg.crop_borders).lower()}")
