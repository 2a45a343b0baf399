"""One reader per on-disk format. Readers return raw arrays exactly as stored (no orientation,
no normalisation); every failure names the file and what is wrong with it."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

JSRT_BYTES_PER_PIXEL = 2


def jsrt_img_side(path: str | Path) -> int:
    """Side length of a raw JSRT `.IMG` (square, 2 bytes per pixel), from the file length alone."""
    path = Path(path)
    try:
        n_bytes = os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: JSRT image not found") from None
    if n_bytes == 0 or n_bytes % JSRT_BYTES_PER_PIXEL:
        raise ValueError(f"{path}: {n_bytes} bytes is not a whole number of 16-bit pixels (truncated .IMG?)")
    n_pixels = n_bytes // JSRT_BYTES_PER_PIXEL
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise ValueError(
            f"{path}: {n_bytes} bytes = {n_pixels} pixels is not a square image "
            f"(truncated or not a JSRT .IMG; a full one is 2048 x 2048 = 8,388,608 bytes)"
        )
    return side


def read_jsrt_img(path: str | Path) -> np.ndarray:
    """Raw JSRT pixels: big-endian uint16, 'white is zero' (lungs numerically high), [S, S]."""
    side = jsrt_img_side(path)
    pixels = np.fromfile(path, dtype=">u2")
    return pixels.reshape(side, side).astype(np.uint16)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a PNG / GIF from its header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return height, width


def read_gray(path: str | Path) -> np.ndarray:
    """Gray levels of a PNG / GIF as stored: uint8, or uint16 for 16-bit PNGs (Montgomery's 12 bits).

    Palette images are read through their palette (`convert("L")`), never as raw indices: the
    re-packaged JSRT PNGs carry an inverted palette.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image)
                if array.dtype != np.uint16:
                    if array.min() < 0 or array.max() > 65535:
                        raise ValueError(f"{path}: 32-bit gray values outside 0..65535")
                    array = array.astype(np.uint16)
                return array
            if mode == "F":
                raise ValueError(f"{path}: floating-point images are not a supported radiograph format")
            if mode in ("RGB", "RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr"):
                image = image.convert("L")
            elif mode != "L":
                raise ValueError(f"{path}: unsupported image mode {mode!r}")
            return np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask: foreground where the value exceeds half the file's maximum.

    SCR GIFs and Montgomery masks are {0, 255}; re-packaged merged masks were resized with
    interpolation and are not binary, hence the half-maximum threshold. An all-zero file is an
    empty mask.
    """
    values = read_gray(path)
    peak = int(values.max()) if values.size else 0
    if peak == 0:
        return np.zeros(values.shape, dtype=bool)
    return values > peak / 2
