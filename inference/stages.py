"""The three batch stages of `cxrsweep segment`, each a function of a batch (a dict of equally long
numpy columns, `inference.inputs.item_columns`), so the plain loop (`inference.local`) and the
Ray path (`sweep.segment_ray`) run the very same code (`segment_batch`): `read_batch`,
`BatchModel`, `encode_batch`. An unreadable file goes through every stage as a row with the
reason, never a mask.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_io.preprocess import NORMALISATION
from engine.runtime.device import memory_format_for, resolve_device
from engine.runtime.prediction import predict_foreground
from errors import UserError
from models.loading import checkpoint_arch, load_network
from models.registry import read_segmenter_checkpoint
from protocol.results import SEGMENTATIONS_SCHEMA, SEGMENTATIONS_SCHEMA_VERSION

log = logging.getLogger(__name__)

# A component is "large" from this share of the image on (a lung is 10-20 %; specks are far below).
LARGE_COMPONENT_FRACTION = 0.005
MAX_LARGE_COMPONENTS = 2
OVERLAY_CHOICES = ("flagged", "all", "none")
# Seconds per image of a batch's stages (segment_batch): read + prepare, network, encode.
STAGE_COLUMNS = ("read_s", "network_s", "encode_s")


# ---------------------------------------------------------------------------------------------
# Stage 1: read and prepare (the training preprocessing)


def read_batch(batch: dict[str, np.ndarray], info: "CheckpointInfo") -> dict[str, np.ndarray]:
    """Adds `image` float32 [B, S, S] (prepared exactly as the checkpoint's training data: its
    image size, and the content crop when `info.crop_borders`), `crop` int64 [B, 6] (its
    `data_io.preprocess.CropBox` row, which holds the full frame's size) and `error` ("" when the
    file was read; else the reason, a zero image and a zero crop row)."""
    from data_io.preprocess import CROP_FIELDS, UNREADABLE_ERRORS, preprocess_file, unreadable_reason

    count, image_size = len(batch["path"]), info.image_size
    images = np.zeros((count, image_size, image_size), np.float32)
    crops = np.zeros((count, len(CROP_FIELDS)), np.int64)
    errors = np.full(count, "", dtype=object)
    for index, path in enumerate(batch["path"]):
        try:
            prepared = preprocess_file(path, image_size, crop_borders=info.crop_borders)
        except UNREADABLE_ERRORS as exc:
            errors[index] = unreadable_reason(path, exc)  # the row holds the path already
            continue
        images[index], crops[index] = prepared.image, prepared.crop.as_row()
    return {**batch, "image": images, "crop": crops, "error": errors}


# ---------------------------------------------------------------------------------------------
# Stage 2: the network


@dataclass(frozen=True)
class CheckpointInfo:
    sha256: str
    task: str
    image_size: int
    arch: str
    foreground_range: tuple[float, float] | None  # per-image foreground share of the content seen in training
    crop_borders: bool  # prepare inputs with the content crop, as the training images were

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """What `cxrsweep segment` needs to know about a checkpoint, read once on the driver.

    Its `preprocessing` record says whether its training images were content crops; a
    checkpoint without the record predates the content crop: its images were resized whole, so
    new ones are too (with a warning)."""
    path = Path(path)
    checkpoint = read_segmenter_checkpoint(path)
    arch = checkpoint_arch(checkpoint)
    span = checkpoint.get("train_foreground_range")
    record = checkpoint.get("preprocessing")
    if record is None:
        log.warning("%s records no preprocessing (written before the content crop): radiographs are resized "
                    "whole, as its training images were", path)
    return CheckpointInfo(file_sha256(path), checkpoint["task"], int(checkpoint["image_size"]), arch,
                          None if span is None else (float(span[0]), float(span[1])),
                          crop_borders=bool(record["crop_borders"]) if record else False)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Segmenter:
    """A checkpoint's network (M_A, or M_A(G_BA(.)) for a transfer run) on its device, ready to
    apply; how new images are prepared for it is `checkpoint_info`'s part."""

    def __init__(self, model: torch.nn.Module, arch: str, task: str, image_size: int, device: torch.device):
        self.model, self.arch, self.task, self.image_size, self.device = model, arch, task, image_size, device

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "auto") -> "Segmenter":
        model, checkpoint = load_network(path)
        if checkpoint["normalisation"] != NORMALISATION:
            raise UserError(f"{path}: trained on {checkpoint['normalisation']!r} images; this cxrsweep prepares "
                            f"{NORMALISATION!r}")
        torch_device = resolve_device(device)
        model = model.to(torch_device, memory_format=memory_format_for(torch_device))
        return cls(model.eval(), checkpoint_arch(checkpoint), checkpoint["task"], int(checkpoint["image_size"]),
                   torch_device)


class BatchModel:
    """The checkpoint's network as a batch stage: adds `foreground` float32 [B, S, S], the
    foreground probability on the prepared image (zeros for unreadable rows), and drops `image`.
    `sha256` (from `checkpoint_info`) guards against a worker that sees another file at the same
    path."""

    def __init__(self, checkpoint: str | Path, sha256: str, device: str = "cpu", threads: int = 0):
        if threads > 0:
            torch.set_num_threads(threads)
        if file_sha256(checkpoint) != sha256:
            raise UserError(f"{checkpoint}: not the checkpoint the job started with (its contents changed)")
        self.segmenter = Segmenter.from_checkpoint(Path(checkpoint), device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch["image"]
        readable = np.flatnonzero(batch["error"] == "")
        foreground = np.zeros(images.shape, np.float32)
        if len(readable):
            foreground[readable] = predict_foreground(self.segmenter.model, images[readable], self.segmenter.device)
        rest = {k: v for k, v in batch.items() if k != "image"}
        return {**rest, "foreground": foreground}


# ---------------------------------------------------------------------------------------------
# Stage 3: masks, statistics, QC


def full_frame_mask(foreground: np.ndarray, crop) -> tuple[np.ndarray, float]:
    """(mask uint8 {0, 1} in the input's full frame at its own size, mean foreground probability
    over the predicted foreground) from one image's foreground probability [S, S] on its content
    crop: `data_io.preprocess.mask_to_full_frame`, as evaluation maps predictions back."""
    from data_io.preprocess import mask_to_full_frame

    predicted = foreground[foreground >= 0.5]
    confidence = float(predicted.mean()) if predicted.size else float("nan")
    return mask_to_full_frame(foreground, crop), confidence


def mask_statistics(mask: np.ndarray) -> dict:
    """Area fractions of `mask`'s frame (whole, patient's left and right of the mask's own
    midline) and components. `encode_batch` passes the content (the crop box): what the
    training masks' range was measured on, whatever padding or collimation surrounds it."""
    from scipy import ndimage

    height, width = mask.shape
    area = float(height * width)
    foreground = mask.astype(bool)
    total = int(foreground.sum())
    if total == 0:
        return {"area_fraction": 0.0, "left_area_fraction": 0.0, "right_area_fraction": 0.0,
                "n_components": 0, "n_large_components": 0}
    columns = np.flatnonzero(foreground.any(axis=0))
    middle = (int(columns[0]) + int(columns[-1]) + 1) // 2
    # The patient's right lung lies on the image's left half.
    right = int(foreground[:, :middle].sum())
    labels, count = ndimage.label(foreground)
    sizes = np.bincount(labels.ravel())[1:]
    return {
        "area_fraction": total / area,
        "left_area_fraction": (total - right) / area,
        "right_area_fraction": right / area,
        "n_components": int(count),
        "n_large_components": int((sizes >= LARGE_COMPONENT_FRACTION * area).sum()),
    }


def quality_flags(stats: dict, foreground_range: tuple[float, float] | None) -> list[str]:
    """Reasons to look at a segmentation: nothing found, an area outside the range of the training
    masks, more than two large components."""
    reasons = []
    fraction = stats["area_fraction"]
    if fraction == 0:
        reasons.append("nothing segmented")
    elif foreground_range is not None and not foreground_range[0] <= fraction <= foreground_range[1]:
        reasons.append(f"area {100 * fraction:.2f}% outside the training range "
                       f"{100 * foreground_range[0]:.2f}-{100 * foreground_range[1]:.2f}%")
    if stats["n_large_components"] > MAX_LARGE_COMPONENTS:
        reasons.append(f"{stats['n_large_components']} large components (more than {MAX_LARGE_COMPONENTS})")
    return reasons


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    buffer = BytesIO()
    # Level 1: masks are two-valued and compress well anyway; the default level costs 5x the time.
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_batch(batch: dict[str, np.ndarray], info: CheckpointInfo,
                 overlays: str = "flagged") -> dict[str, np.ndarray]:
    """Rows of OUT/segmentations.parquet (as columns) plus `mask_png` / `overlay_png` bytes (b"" for none)."""
    from data_io.preprocess import CropBox

    rows, mask_pngs, overlay_pngs = [], [], []
    now = time.time()
    for index, path in enumerate(batch["path"]):
        row = {"path": path, "file_bytes": int(batch["file_bytes"][index]),
               "file_mtime_ns": int(batch["mtime_ns"][index]), "task": info.task, "checkpoint_sha256": info.sha256,
               "segmented_at": now, "schema_version": SEGMENTATIONS_SCHEMA_VERSION}
        error = batch["error"][index]
        if error:
            rows.append({**row, "status": "unreadable", "error": error, "qc_flag": True,
                         "qc_reason": "unreadable file"})
            mask_pngs.append(b"")
            overlay_pngs.append(b"")
            continue
        crop = CropBox.from_row(batch["crop"][index])
        mask, confidence = full_frame_mask(batch["foreground"][index], crop)
        stats = mask_statistics(mask[crop.top:crop.bottom, crop.left:crop.right])
        reasons = quality_flags(stats, info.foreground_range)
        rows.append({**row, **stats, "status": "ok", "error": "", "mask": f"masks/{batch['mask_name'][index]}",
                     "height": crop.height, "width": crop.width, "content_top": crop.top,
                     "content_left": crop.left, "content_bottom": crop.bottom, "content_right": crop.right,
                     "mean_confidence": confidence, "qc_flag": bool(reasons), "qc_reason": "; ".join(reasons)})
        mask_pngs.append(png_bytes(mask * 255))
        wanted = overlays == "all" or (overlays == "flagged" and reasons)
        overlay_pngs.append(_overlay(path, mask) if wanted else b"")
    columns = {name: np.array([r.get(name) for r in rows], dtype=object) for name in SEGMENTATIONS_SCHEMA.names}
    columns["mask_name"] = batch["mask_name"]
    columns["mask_png"] = np.array(mask_pngs, dtype=object)
    columns["overlay_png"] = np.array(overlay_pngs, dtype=object)
    return columns


def _overlay(path: str, mask: np.ndarray) -> bytes:
    from data_io.overlays import render_overlay
    from data_io.preprocess import display_radiograph

    return png_bytes(render_overlay(display_radiograph(path), mask))


# ---------------------------------------------------------------------------------------------
# The three in a row


def segment_batch(columns: dict[str, np.ndarray], info: CheckpointInfo, model: BatchModel,
                  overlays: str = "flagged") -> dict[str, np.ndarray]:
    """read -> network -> encode of one batch of `item_columns`, as every path runs it; adds the
    seconds each stage took per image of the batch (`STAGE_COLUMNS`, for benchmarks/bench_segment.py;
    SegmentOutput ignores them)."""
    count = max(1, len(columns["path"]))
    started = time.perf_counter()
    read = read_batch(columns, info)
    read_done = time.perf_counter()
    predicted = model(read)
    network_done = time.perf_counter()
    encoded = encode_batch(predicted, info, overlays)
    seconds = (read_done - started, network_done - read_done, time.perf_counter() - network_done)
    for name, value in zip(STAGE_COLUMNS, seconds):
        encoded[name] = np.full(len(columns["path"]), value / count)
    return encoded
