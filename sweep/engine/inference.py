"""Applying a trained segmenter: batched prediction (shared with training) and `cxrsweep segment`."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def autocast_for(device: torch.device):
    """Mixed precision on CUDA; full precision on the CPU, where it is exact and deterministic."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def memory_format_for(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, S, S] float images -> [N, 1, S, S] tensor on `device` in its preferred layout."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(device)
    return tensor.contiguous(memory_format=memory_format_for(device))


@torch.no_grad()
def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device,
                  output_size: tuple[int, int] | None = None) -> np.ndarray:
    """Foreground masks uint8 [N, H, W] for normalised images [N, S, S] (model in eval mode).

    With `output_size`, logits are resized bilinearly before the argmax, which gives smoother
    masks than resizing the mask itself.
    """
    model.eval()
    out = []
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        with autocast_for(device):
            logits = model(as_batch(images[start:start + EVAL_BATCH_SIZE], device))
        if output_size is not None:
            logits = F.interpolate(logits.float(), size=output_size, mode="bilinear", align_corners=False)
        out.append(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())
    if not out:
        return np.zeros((0,) + (output_size or images.shape[1:]), np.uint8)
    return np.concatenate(out)


@torch.no_grad()
def predict_foreground(model: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Foreground probability float32 [N, S, S] for normalised images [N, S, S] (model in eval mode)."""
    model.eval()
    out = []
    for start in range(0, len(images), EVAL_BATCH_SIZE):
        with autocast_for(device):
            logits = model(as_batch(images[start:start + EVAL_BATCH_SIZE], device))
        out.append((1 - torch.softmax(logits.float(), dim=1)[:, 0]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)


class Segmenter:
    """A checkpoint's network plus what it needs to prepare new images as its training data was."""

    def __init__(self, model: nn.Module, arch: str, task: str, image_size: int, device: torch.device,
                 crop_borders: bool = False):
        self.model, self.arch, self.task, self.image_size, self.device = model, arch, task, image_size, device
        self.crop_borders = crop_borders

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "auto") -> "Segmenter":
        from data_io.preprocess import NORMALISATION
        from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint

        checkpoint = read_segmenter_checkpoint(path)
        if checkpoint["normalisation"] != NORMALISATION:
            raise ValueError(f"{path}: trained on {checkpoint['normalisation']!r} images; this cxrsweep prepares "
                             f"{NORMALISATION!r}")
        record = checkpoint.get("preprocessing")
        if record is None:
            log.warning("%s records no preprocessing (written before the content crop): radiographs are resized "
                        "whole, as its training images were", path)
        crop_borders = bool(record["crop_borders"]) if record else False
        torch_device = resolve_device(device)
        arch = checkpoint["arch"]
        if "translator" in checkpoint:
            # A transfer run's best.pt: target images go through G_BA before M_A, as in training.
            from sweep.engine.transfer import load_transfer_model

            model = load_transfer_model(path)
            arch = f"{checkpoint['translator']['translator']} G_BA + {arch}"
        else:
            model = segmenter_from_checkpoint(checkpoint)
        model = model.to(torch_device, memory_format=memory_format_for(torch_device))
        return cls(model.eval(), arch, checkpoint["task"], int(checkpoint["image_size"]), torch_device, crop_borders)

    def prepare(self, path: Path):
        """One radiograph file as this network's training images were prepared (data_io.preprocess)."""
        from data_io.preprocess import preprocess_file

        return preprocess_file(path, self.image_size, crop_borders=self.crop_borders)

    def segment_prepared(self, prepared) -> np.ndarray:
        """Mask uint8 {0, 1} of a PreparedRadiograph at the radiograph's own size, placed at its crop."""
        from data_io.preprocess import mask_to_full_frame

        probability = predict_foreground(self.model, prepared.image[None], self.device)[0]
        return mask_to_full_frame(probability, prepared.crop)

    def segment_file(self, path: Path, out_dir: Path) -> tuple[Path, Path, float]:
        """Write OUT/masks/<name>.png and OUT/overlays/<name>.png; returns both paths and the foreground fraction."""
        from sweep.engine.overlays import render_overlay, safe_name

        prepared = self.prepare(path)
        mask = self.segment_prepared(prepared)
        name = safe_name(path.stem) + ".png"
        mask_path, overlay_path = out_dir / "masks" / name, out_dir / "overlays" / name
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask * 255).save(mask_path)
        render_overlay(prepared.display, mask).save(overlay_path)
        return mask_path, overlay_path, float(mask.mean())
