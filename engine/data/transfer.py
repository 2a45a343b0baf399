"""The arrays one transfer run sees: the source (A, JSRT) and target (B) splits of one repetition."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.data.segmentation import PER_IMAGE_STANDARDISATION, FullFrame, SegmentationData, check_preprocessing

if TYPE_CHECKING:
    from data_io.cache import CachedDataset
    from protocol.config import RunConfig


@dataclass
class TransferData:
    """Images float32 [N, S, S] (already normalised), masks uint8 [N, S, S] in {0, 1}.

    Target masks are None where the target dataset has no labels for the task (heart and
    clavicles on Montgomery): such runs give overlays, never numbers. With content crops
    (`crop_borders`), masks are in the cropped frame and the `*_frame`s hold the whole frame,
    where validation and test scores are computed (engine.data.segmentation.FullFrame).
    """

    task: str
    source_train_images: np.ndarray
    source_train_masks: np.ndarray
    source_val_images: np.ndarray
    source_val_masks: np.ndarray
    target_train_images: np.ndarray  # every target training image, labelled or not
    target_labelled_images: np.ndarray  # the label fraction's subset of them
    target_labelled_masks: np.ndarray
    target_val_images: np.ndarray
    target_val_masks: np.ndarray | None
    target_test_images: np.ndarray
    target_test_masks: np.ndarray | None
    target_test_ids: list[str]
    label_fraction: float
    target_val_ids: list[str] = field(default_factory=list)
    source_name: str = "source"
    target_name: str = "target"
    normalisation: str = PER_IMAGE_STANDARDISATION
    crop_borders: bool = False
    source_val_frame: FullFrame | None = None  # None: nothing trimmed there
    target_val_frame: FullFrame | None = None
    target_labelled_frame: FullFrame | None = None  # of target_labelled_images
    target_test_frame: FullFrame | None = None
    # dataset name -> content fingerprint (CachedDataset.fingerprint) of source and target
    fingerprints: dict[str, str] = field(default_factory=dict)
    # Positions in target_train_images of the labelled ones (target_labelled_images); None: not
    # recorded, which only a run without target labels may leave so (all training images unlabelled).
    target_labelled_positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        arrays = {name: value for name, value in vars(self).items() if isinstance(value, np.ndarray)}
        sizes = {value.shape[1:] for value in arrays.values() if len(value)}
        if any(value.ndim != 3 for value in arrays.values()) or len(sizes) > 1:
            shapes = ", ".join(f"{name} {value.shape}" for name, value in arrays.items())
            raise ValueError(f"{self.source_name} -> {self.target_name}: "
                             f"arrays must all be [N, S, S] of one size: {shapes}")
        for images, masks in [("source_train_images", "source_train_masks"), ("source_val_images", "source_val_masks"),
                              ("target_labelled_images", "target_labelled_masks"),
                              ("target_val_images", "target_val_masks"), ("target_test_images", "target_test_masks")]:
            mask_array = getattr(self, masks)
            if mask_array is not None and len(mask_array) != len(getattr(self, images)):
                raise ValueError(f"{self.source_name} -> {self.target_name}: {len(getattr(self, images))} {images} "
                                 f"but {len(mask_array)} {masks}")
        for name in ("source_train_images", "source_val_images", "target_train_images", "target_test_images"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"{self.source_name} -> {self.target_name}: no {name.replace('_images', '')} images")
        if len(self.target_test_ids) != len(self.target_test_images):
            raise ValueError(f"{self.target_name}: {len(self.target_test_ids)} test ids for "
                             f"{len(self.target_test_images)} test images")

    @property
    def image_size(self) -> int:
        return int(self.source_train_images.shape[1])

    @property
    def target_has_labels(self) -> bool:
        """Whether the target dataset labels this task at all (lungs on Montgomery, yes)."""
        return self.target_test_masks is not None

    @property
    def n_labelled(self) -> int:
        return int(len(self.target_labelled_images))

    @property
    def target_unlabelled_images(self) -> np.ndarray:
        """The target training images whose labels the run does not keep."""
        if self.target_labelled_positions is None:
            if self.n_labelled:
                raise ValueError(f"{self.target_name}: which target training images are labelled is not recorded")
            return self.target_train_images
        unlabelled = np.ones(len(self.target_train_images), bool)
        unlabelled[list(self.target_labelled_positions)] = False
        return self.target_train_images[unlabelled]


def transfer_splits(cfg: "RunConfig", n_source: int, n_target: int):
    """(source Split, target Split) of repetition `cfg.repetition` (`repetition_splits`)."""
    from data_io.splits import repetition_splits

    return repetition_splits(n_source, n_target, cfg.repetition, cfg.n_folds, cfg.seed)


def transfer_data(cfg: "RunConfig", source: "CachedDataset", target: "CachedDataset") -> TransferData:
    """The arrays of `cfg.task` for repetition `cfg.repetition` at `cfg.label_fraction` % target labels."""
    from data_io.splits import label_subset

    if cfg.task not in source.masks:
        raise ValueError(f"{source.name}: no {cfg.task!r} masks (it labels {', '.join(sorted(source.masks))})")
    for dataset in (source, target):
        check_preprocessing(cfg, dataset)
    fraction = 0.0 if cfg.label_fraction is None else float(cfg.label_fraction)
    source_split, target_split = transfer_splits(cfg, len(source.ids), len(target.ids))
    source_masks = source.masks[cfg.task]
    target_masks = target.masks.get(cfg.task)
    # A target without labels for the task has nothing to keep, whatever the fraction asks.
    labelled = label_subset(target_split.train, fraction if target_masks is not None else 0.0, seed=cfg.seed)

    def masks_of(index: np.ndarray) -> np.ndarray | None:
        return None if target_masks is None else target_masks[index]

    def target_frame(index: np.ndarray) -> FullFrame | None:
        return None if target_masks is None else FullFrame.of(target, cfg.task, index)

    return TransferData(
        task=cfg.task,
        source_train_images=source.images[source_split.train], source_train_masks=source_masks[source_split.train],
        source_val_images=source.images[source_split.val], source_val_masks=source_masks[source_split.val],
        target_train_images=target.images[target_split.train],
        target_labelled_images=target.images[labelled],
        target_labelled_masks=(target_masks[labelled] if target_masks is not None
                               else np.zeros((0,) + target.images.shape[1:], np.uint8)),
        target_val_images=target.images[target_split.val], target_val_masks=masks_of(target_split.val),
        target_test_images=target.images[target_split.test], target_test_masks=masks_of(target_split.test),
        target_test_ids=[target.ids[i] for i in target_split.test],
        target_val_ids=[target.ids[i] for i in target_split.val],
        label_fraction=fraction, source_name=source.name, target_name=target.name,
        crop_borders=cfg.crop_borders, source_val_frame=FullFrame.of(source, cfg.task, source_split.val),
        target_val_frame=target_frame(target_split.val), target_test_frame=target_frame(target_split.test),
        target_labelled_frame=target_frame(labelled) if len(labelled) else None,
        fingerprints={source.name: source.fingerprint, target.name: target.fingerprint},
        target_labelled_positions=tuple(int(i) for i in np.flatnonzero(np.isin(target_split.train, labelled))),
    )


def hide_test(data: "SegmentationData | TransferData") -> "SegmentationData | TransferData":
    """A tuning trial's data: the validation split stands in for the test split, so a tuning
    trial never predicts a test image (SegmentationData or TransferData)."""
    if isinstance(data, SegmentationData):
        return dataclasses.replace(data, test_images=data.val_images, test_masks=data.val_masks,
                                   test_ids=list(data.val_ids or []))
    return dataclasses.replace(data, target_test_images=data.target_val_images,
                               target_test_masks=data.target_val_masks, target_test_ids=list(data.target_val_ids))
