"""One reader per on-disk format. Readers return raw arrays exactly as stored (no orientation,
no normalisation); every failure names the file and what is wrong with it. A file whose content
cannot be decoded, or is not a usable radiograph, raises `UnreadableImage`."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from errors import MissingInput, UserError

JSRT_BYTES_PER_PIXEL = 2

# Radiograph files by suffix: JSRT's raw .IMG, DICOM, and the common picture formats. A file
# without a suffix is a radiograph when it is DICOM (archives often drop the suffix).
JSRT_SUFFIXES = (".img",)
DICOM_SUFFIXES = (".dcm", ".dicom")
PICTURE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
RADIOGRAPH_SUFFIXES = JSRT_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"


class UnreadableImage(UserError):
    """This file's content cannot be decoded or is not a usable radiograph (damaged, truncated,
    a format or compression no installed decoder reads, colour, several frames, uniform, ...).
    The message begins with the file's path. What the program gets wrong is never one: a job
    over an archive lists these files and goes on (`data_io.preprocess.UNREADABLE_ERRORS`),
    anything else stops it with its traceback."""


def jsrt_img_side(path: str | Path) -> int:
    """Side length of a raw JSRT `.IMG` (square, 2 bytes per pixel), from the file length alone."""
    path = Path(path)
    try:
        n_bytes = os.path.getsize(path)
    except FileNotFoundError:
        raise MissingInput(f"{path}: JSRT image not found") from None
    if n_bytes == 0 or n_bytes % JSRT_BYTES_PER_PIXEL:
        raise UnreadableImage(f"{path}: {n_bytes} bytes is not a whole number of 16-bit pixels (truncated .IMG?)")
    n_pixels = n_bytes // JSRT_BYTES_PER_PIXEL
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise UnreadableImage(
            f"{path}: {n_bytes} bytes = {n_pixels} pixels is not a square image "
            f"(truncated or not a JSRT .IMG; a full one is 2048 x 2048 = 8,388,608 bytes)"
        )
    return side


def read_jsrt_img(path: str | Path) -> np.ndarray:
    """Raw JSRT pixels: big-endian uint16, 'white is zero' (lungs numerically high), [S, S]."""
    side = jsrt_img_side(path)
    pixels = np.fromfile(path, dtype=">u2")
    return pixels.reshape(side, side).astype(np.uint16)


# What Pillow raises for a file it cannot decode: unknown or damaged content (UnidentifiedImageError
# and truncated data are OSError), malformed headers (SyntaxError, ValueError: e.g. a PNG text
# chunk over its limit, TIFF tags that make no sense) and a decompression bomb.
PICTURE_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a PNG / GIF from its header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise MissingInput(f"{path}: file not found") from None
    except PICTURE_DECODE_ERRORS as exc:
        raise UnreadableImage(f"{path}: not a readable image ({exc})") from None
    return height, width


def read_gray(path: str | Path) -> np.ndarray:
    """Gray levels of a PNG / GIF as stored: uint8, or uint16 for 16-bit PNGs (Montgomery's 12 bits).

    Palette images are read through their palette (`convert("L")`), never as raw indices: the
    re-packaged JSRT PNGs carry an inverted palette.
    """
    path = Path(path)
    with _decoded_picture(path) as image:
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image)
            if array.dtype != np.uint16:
                if array.min() < 0 or array.max() > 65535:
                    raise UnreadableImage(f"{path}: 32-bit gray values outside 0..65535")
                array = array.astype(np.uint16)
            return array
        if mode == "F":
            raise UnreadableImage(f"{path}: floating-point images are not a supported radiograph format")
        if mode in ("RGB", "RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr"):
            image = image.convert("L")
        elif mode != "L":
            raise UnreadableImage(f"{path}: unsupported image mode {mode!r}")
        return np.asarray(image, dtype=np.uint8)


def _decoded_picture(path: Path) -> Image.Image:
    """The picture opened and decoded by Pillow (close it after use); a file Pillow cannot decode
    raises UnreadableImage naming it."""
    try:
        image = Image.open(path)
        try:
            image.load()
        except BaseException:
            image.close()
            raise
    except FileNotFoundError:
        raise MissingInput(f"{path}: file not found") from None
    except PICTURE_DECODE_ERRORS as exc:
        raise UnreadableImage(f"{path}: not a readable image ({exc})") from None
    return image


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


# --- DICOM ------------------------------------------------------------------------------------


@dataclass
class Radiograph:
    """A decoded radiograph before orientation: values as the file means them, and their polarity.

    `white_is_zero`: high values display dark (JSRT `.IMG`, DICOM MONOCHROME1); the orientation
    step inverts them as `inversion_sum - value` (`None`: the JSRT rule, see
    `data_io.datasets.display_polarity`).
    """

    pixels: np.ndarray  # [H, W]: uint8 / uint16 as stored, or float32 after DICOM's LUTs
    white_is_zero: bool = False
    inversion_sum: float | None = None


def is_dicom_file(path: str | Path) -> bool:
    """Whether the file carries DICOM's 'DICM' marker after its 128-byte preamble."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def is_radiograph_file(path: Path) -> bool:
    return path.suffix.lower() in RADIOGRAPH_SUFFIXES or is_dicom_file(path)


def radiograph_id(path: Path) -> str:
    """A radiograph's case id: its name without a known suffix (DICOM names like 1.2.840.5 keep their dots)."""
    return path.stem if path.suffix.lower() in RADIOGRAPH_SUFFIXES else path.name


def is_dicom_path(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix not in RADIOGRAPH_SUFFIXES and is_dicom_file(path))


def _read_dicom_dataset(path: Path, header_only: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except FileNotFoundError:
        raise MissingInput(f"{path}: file not found") from None
    except InvalidDicomError as exc:
        raise UnreadableImage(f"{path}: not a readable DICOM file ({exc})") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableImage(f"{path}: damaged DICOM file ({type(exc).__name__}: {exc})") from None


def _check_dicom_radiograph(path: Path, ds, with_pixels: bool = True) -> str:
    if "Rows" not in ds or "Columns" not in ds or (with_pixels and "PixelData" not in ds):
        raise UnreadableImage(f"{path}: DICOM file without an image (no Rows / Columns / Pixel Data)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableImage(f"{path}: photometric interpretation {photometric or 'missing'!r}; a radiograph is "
                         "MONOCHROME1 or MONOCHROME2")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnreadableImage(f"{path}: {frames} frame(s) of {ds.get('SamplesPerPixel', 1)} sample(s); a radiograph is "
                         "one frame of one sample")
    return photometric


def dicom_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a DICOM radiograph from its header."""
    path = Path(path)
    ds = _read_dicom_dataset(path, header_only=True)
    _check_dicom_radiograph(path, ds, with_pixels=False)
    return int(ds.Rows), int(ds.Columns)


def read_dicom(path: str | Path) -> Radiograph:
    """A DICOM radiograph through its modality LUT (rescale slope / intercept) and its first VOI
    LUT or window when present, as float32; MONOCHROME1 is reported as `white_is_zero` with the
    inversion that maps the output range onto itself. Compressed pixel data needs a decoder
    pydicom can use (RLE and, through Pillow, baseline JPEG and JPEG 2000 come with it; JPEG
    lossless and JPEG-LS need pylibjpeg-libjpeg or gdcm): otherwise the error names the file,
    the transfer syntax and the missing decoder."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    ds = _read_dicom_dataset(path)
    photometric = _check_dicom_radiograph(path, ds)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        stored = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        name = getattr(syntax, "name", syntax)
        raise UnreadableImage(f"{path}: cannot decode pixel data compressed as {name} ({syntax}): no installed "
                         f"decoder handles it ({exc})") from None
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        raise UnreadableImage(f"{path}: damaged DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if stored.ndim != 2:
        raise UnreadableImage(f"{path}: pixel data has shape {stored.shape}, expected one 2-D frame")
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    extremes = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1],
                        dtype=stored.dtype)

    def display_values(values: np.ndarray) -> np.ndarray:
        return apply_voi_lut(apply_modality_lut(values, ds), ds)

    try:
        pixels = np.asarray(display_values(stored), dtype=np.float32)
        span = np.asarray(display_values(extremes), dtype=np.float64)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UnreadableImage(f"{path}: unusable modality / VOI LUT ({exc})") from None
    if not np.all(np.isfinite(pixels)):
        raise UnreadableImage(f"{path}: rescaled pixel values are not finite")
    monochrome1 = photometric == "MONOCHROME1"
    return Radiograph(pixels, white_is_zero=monochrome1,
                      inversion_sum=float(span.min() + span.max()) if monochrome1 else None)


# --- any radiograph file (decoding by format: data_io.preprocess.decode_radiograph) ----------


def radiograph_kind(path: Path) -> str:
    """Which decoder reads a radiograph file: "jsrt-img" (JSRT's raw .IMG, by its suffix), "dicom"
    (a DICOM suffix, or no known suffix and DICOM's marker) or "picture" (read with Pillow)."""
    if path.suffix.lower() in JSRT_SUFFIXES:
        return "jsrt-img"
    return "dicom" if is_dicom_path(path) else "picture"


def radiograph_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of any radiograph file from its header (JSRT: from the file length)."""
    path = Path(path)
    kind = radiograph_kind(path)
    if kind == "jsrt-img":
        side = jsrt_img_side(path)
        return side, side
    if kind == "dicom":
        return dicom_image_size(path)
    return image_size(path)
