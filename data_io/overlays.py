"""Prediction overlays: the radiograph in gray, the prediction filled in red, the truth outlined in green."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PREDICTION_RGB = np.array([255, 40, 40], dtype=np.float32)
TRUTH_RGB = np.array([40, 255, 40], dtype=np.uint8)
PREDICTION_ALPHA = 0.4


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """Stretch a normalised image to 0..255 between its 1st and 99th percentiles."""
    low, high = np.percentile(image, (1, 99))
    scale = 255.0 / max(float(high - low), 1e-6)
    return np.clip((image - low) * scale, 0, 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with at least one 4-neighbour outside it."""
    mask = mask.astype(bool)
    padded = np.pad(mask, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def render_overlay(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None) -> Image.Image:
    gray = to_gray_uint8(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    predicted = prediction.astype(bool)
    rgb[predicted] = (1 - PREDICTION_ALPHA) * rgb[predicted] + PREDICTION_ALPHA * PREDICTION_RGB
    rgb = rgb.astype(np.uint8)
    if truth is not None:
        rgb[outline(truth)] = TRUTH_RGB
    return Image.fromarray(rgb, mode="RGB")


def safe_name(image_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id)


def save_overlays(out_dir: Path, ids: list[str], images: np.ndarray, predictions: np.ndarray,
                  truths: np.ndarray | None = None, limit: int | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    count = len(ids) if limit is None else min(limit, len(ids))
    for i in range(count):
        path = out_dir / f"{safe_name(ids[i])}.png"
        render_overlay(images[i], predictions[i], None if truths is None else truths[i]).save(path)
        written.append(path)
    return written
