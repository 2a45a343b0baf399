"""The arrays one supervised run trains, validates and tests on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from data_io.cache import CachedDataset
    from sweep.config import RunConfig

# What the cache does to intensities (data_io.cache); recorded in checkpoints so that
# `cxrsweep segment` prepares new images the same way.
PER_IMAGE_STANDARDISATION = "per_image_standardisation"


@dataclass
class SegmentationData:
    """Images float32 [N, S, S] (already normalised), masks uint8 [N, S, S] in {0, 1}, ids per image."""

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
        sizes = {getattr(self, f"{p}_images").shape[1] for p in ("train", "val", "test") if len(getattr(self, f"{p}_images"))}
        if len(sizes) > 1:
            raise ValueError(f"{self.dataset}: train/val/test image sizes differ: {sorted(sizes)}")
        if len(self.train_images) == 0:
            raise ValueError(f"{self.dataset}: no training images")
        if len(self.val_images) == 0:
            raise ValueError(f"{self.dataset}: no validation images (the best epoch is chosen on them)")
        if len(self.test_ids) != len(self.test_images):
            raise ValueError(f"{self.dataset}: {len(self.test_ids)} test ids for {len(self.test_images)} test images")

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def foreground_fraction(self) -> float:
        return float(self.train_masks.mean())


def segmentation_data(cfg: "RunConfig", dataset: "CachedDataset") -> SegmentationData:
    """Train / second-validation / test arrays of `cfg.task` for JSRT cross-validation fold `cfg.fold`."""
    from data_io.splits import cv_split

    if cfg.task not in dataset.masks:
        raise ValueError(
            f"{dataset.name}: no {cfg.task!r} masks in this dataset (it labels {', '.join(sorted(dataset.masks))})")
    if dataset.image_size != cfg.image_size:
        raise ValueError(f"{dataset.name}: cached at {dataset.image_size} px but the config asks for {cfg.image_size} px")
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
        task=cfg.task, dataset=dataset.name, fingerprints={dataset.name: dataset.fingerprint},
    )
