"""Preparing one radiograph for a network, and mapping what the network predicts back onto it.

The content crop (`find_content_box`) trims what is not the radiograph before resizing:
padding (uniform bands of one gray level along an edge, e.g. the black bands of a film padded
to a square) and collimation borders (bright, flat bands of unexposed film along an edge that
end in a sharp step). Left in place, both are stretched into the S x S image and a segmenter
that never saw them labels them (a black band standardises to lung-dark). Noisy dark air
around the body is never trimmed, so films without borders (JSRT) keep their framing. The
crop is recorded per image (`CropBox`), and masks predicted in the cropped frame are mapped
back to the full frame, where they are scored: lung cut away by a bad crop counts as missed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
from PIL import Image

from data_io import datasets
from data_io.readers import Radiograph, UnreadableImage, radiograph_kind, read_dicom, read_gray, read_jsrt_img
from errors import MissingInput

# Bump when decoding, orientation, the content crop, resizing or normalisation changes: old caches then miss.
# 2: orientation at full resolution, then the content crop. 3: DICOM decoded here too (MONOCHROME1
# inverted over its output range), one pipeline for the cache and `cxrsweep segment`.
PREPROCESS_VERSION = 3
NORMALISATION = "per_image_standardisation"

# The content crop. Lengths are fractions of the image's gray-level range R (its 0.5th to 99.5th
# percentile), so they hold for 8-, 12- and 16-bit files alike.
CONSTANT_TOLERANCE = 0.01  # a padding line: nearly every pixel within 1 % of R of the line's median...
CONSTANT_SHARE = 0.98  # ...namely this share of them (tolerates compression ringing, not detector noise)
BAND_TOLERANCE = 0.08  # a collimation line: this close to the band's level...
BAND_SHARE = 0.9  # ...for this share of its pixels (bands on the sides next to it take a few %)
STEP_SHARE = 0.5  # the band ends in a step: at most this share of the lines just inside is at its level
BAND_BRIGHTER_BY = 0.15  # and it is brighter than the content's median by this much (unexposed film)
STEP_LINES = 3  # lines just inside a band that are checked for the step (the first may be a mixed edge)
MAX_SIDE_FRACTION = 0.3  # never trim more than this share of the height (width) from one side...
MIN_KEPT_FRACTION = 0.5  # ...nor keep less than this share of the height (width)
SIDES = ("top", "bottom", "left", "right")
CROP_FIELDS = ("top", "left", "bottom", "right", "height", "width")


@dataclass(frozen=True)
class CropBox:
    """Where the content lies in a radiograph's full frame (oriented as displayed): rows
    top .. bottom - 1 and columns left .. right - 1 of a height x width image."""

    top: int
    left: int
    bottom: int
    right: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if not (0 <= self.top < self.bottom <= self.height and 0 <= self.left < self.right <= self.width):
            raise ValueError(f"not a crop box inside a {self.height} x {self.width} frame: {self.as_row()}")

    @classmethod
    def full(cls, height: int, width: int) -> "CropBox":
        return cls(0, 0, int(height), int(width), int(height), int(width))

    @classmethod
    def from_row(cls, row) -> "CropBox":
        """From a row of `CROP_FIELDS` (as the cache stores them)."""
        return cls(*(int(value) for value in row))

    def as_row(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in CROP_FIELDS)

    @property
    def trimmed(self) -> bool:
        return (self.top, self.left, self.bottom, self.right) != (0, 0, self.height, self.width)

    @property
    def kept_fraction(self) -> float:
        """Share of the frame's area inside the box."""
        return (self.bottom - self.top) * (self.right - self.left) / (self.height * self.width)

    def side_widths(self) -> dict[str, int]:
        """Pixels trimmed from each side."""
        return {"top": self.top, "bottom": self.height - self.bottom,
                "left": self.left, "right": self.width - self.right}

    def region_in(self, shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """(left, top, right, bottom) of the box in an array of `shape` covering the same frame
        (e.g. an SCR mask at half the image's side); None when the box is the whole frame."""
        if not self.trimmed:
            return None
        scale_y, scale_x = shape[0] / self.height, shape[1] / self.width
        return (self.left * scale_x, self.top * scale_y, self.right * scale_x, self.bottom * scale_y)


def preprocessing_record(crop_borders: bool) -> dict:
    """What a checkpoint records of the preprocessing its network was trained on, so that
    `cxrsweep segment` prepares new radiographs the same way. A checkpoint without it predates
    the content crop: its images were resized whole."""
    return {"crop_borders": bool(crop_borders), "preprocess_version": PREPROCESS_VERSION,
            "normalisation": NORMALISATION}


# --------------------------------------------------------------------------------------------
# Finding the content.


SAMPLE_SIDE = 1024  # image-wide statistics are taken on every k-th pixel of larger images


def _sample(pixels: np.ndarray) -> np.ndarray:
    step = max(1, max(pixels.shape) // SAMPLE_SIDE)
    return pixels[::step, ::step]


def _gray_range(pixels: np.ndarray) -> float:
    low, high = np.percentile(_sample(pixels), [0.5, 99.5])
    return float(high - low)


def _edge_lines(pixels: np.ndarray, box: list[int], side: str, start: int, stop: int) -> np.ndarray:
    """Lines start .. stop - 1 of the box counted from `side` inwards, as rows [lines, length]."""
    top, left, bottom, right = box
    if side == "top":
        return pixels[top + start:min(top + stop, bottom), left:right]
    if side == "bottom":
        return pixels[max(bottom - stop, top):bottom - start, left:right][::-1]
    if side == "left":
        return pixels[top:bottom, left + start:min(left + stop, right)].T
    return pixels[top:bottom, max(right - stop, left):right - start].T[::-1]


def _leading_run(flags: np.ndarray) -> int:
    """How many leading entries are True."""
    misses = np.flatnonzero(~flags)
    return int(misses[0]) if len(misses) else len(flags)


def _count_leading(pixels: np.ndarray, box: list[int], side: str, limit: int, line_ok) -> int:
    """How many lines from `side` inwards (at most `limit`) pass `line_ok(lines) -> bool per line`,
    read in growing blocks so that a film without borders costs a few lines per side."""
    count, block = 0, 8
    while count < limit:
        ok = line_ok(_edge_lines(pixels, box, side, count, min(limit, count + block)))
        run = _leading_run(ok)
        count += run
        if run < len(ok) or len(ok) == 0:
            break
        block *= 2
    return count


def _constant_lines(pixels: np.ndarray, box: list[int], side: str, limit: int, gray_range: float) -> int:
    """Leading lines that are one gray level (padding)."""

    def constant(lines: np.ndarray) -> np.ndarray:
        medians = np.median(lines, axis=1, keepdims=True)
        return (np.abs(lines - medians) <= CONSTANT_TOLERANCE * gray_range).mean(axis=1) >= CONSTANT_SHARE

    return _count_leading(pixels, box, side, limit, constant)


def _collimation_lines(pixels: np.ndarray, box: list[int], side: str, limit: int, gray_range: float,
                       content_median: float) -> int:
    """Leading lines of a bright, flat band that ends in a step (collimation), else 0."""
    level = float(np.median(_edge_lines(pixels, box, side, 0, 1)))
    if level < content_median + BAND_BRIGHTER_BY * gray_range:
        return 0

    def at_level(lines: np.ndarray) -> np.ndarray:
        return (np.abs(lines - level) <= BAND_TOLERANCE * gray_range).mean(axis=1)

    band = _count_leading(pixels, box, side, limit, lambda lines: at_level(lines) >= BAND_SHARE)
    # The lines just inside (past the allowance too) must be mostly off the band's level.
    inside = at_level(_edge_lines(pixels, box, side, band, band + STEP_LINES))
    if band == 0 or len(inside) == 0 or inside.min() > STEP_SHARE:
        return 0
    return band


def find_content_box(pixels: np.ndarray, source: Path | str) -> CropBox:
    """The radiograph's content in an image oriented as displayed (bone bright): the box left
    after trimming padding and collimation bands from every side (see the module docstring).

    Never trims more than MAX_SIDE_FRACTION of a side nor keeps less than MIN_KEPT_FRACTION of
    the height or width. An image of (nearly) one gray level is refused, naming `source`.
    """
    if pixels.ndim != 2:
        raise UnreadableImage(f"{source}: expected a single-channel image, got shape {pixels.shape}")
    height, width = pixels.shape
    gray_range = _gray_range(pixels)
    if not np.isfinite(gray_range) or gray_range <= 0:
        raise UnreadableImage(f"{source}: the image is uniform (one gray level over at least 99 % of it); "
                         "there is no radiograph to find")
    box = [0, 0, height, width]  # top, left, bottom, right

    def allowance(side: str) -> int:
        vertical = side in ("top", "bottom")
        extent = height if vertical else width
        trimmed_here = box[0] if side == "top" else height - box[2] if side == "bottom" \
            else box[1] if side == "left" else width - box[3]
        kept = box[2] - box[0] if vertical else box[3] - box[1]
        return max(0, min(int(MAX_SIDE_FRACTION * extent) - trimmed_here,
                          kept - int(np.ceil(MIN_KEPT_FRACTION * extent))))

    def trim(side: str, lines: int) -> None:
        index = SIDES.index(side)
        box[(0, 2, 1, 3)[index]] += lines if side in ("top", "left") else -lines

    for _ in range(4):  # padding around collimation around padding: a few passes settle it
        before = list(box)
        for side in SIDES:
            room = allowance(side)
            if room:
                trim(side, _constant_lines(pixels, box, side, room, gray_range))
        content_median = float(np.median(_sample(pixels[box[0]:box[2], box[1]:box[3]])))
        for side in SIDES:
            room = allowance(side)
            if room:
                trim(side, _collimation_lines(pixels, box, side, room, gray_range, content_median))
        if box == before:
            break
    return CropBox(box[0], box[1], box[2], box[3], height, width)


# --------------------------------------------------------------------------------------------
# The pipeline of one radiograph.


@dataclass
class PreparedRadiograph:
    """One radiograph ready for a network, and what it takes to map predictions back."""

    image: np.ndarray  # float32 [S, S]: the content crop, resized, per-image standardised
    crop: CropBox  # in the oriented full frame
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> bool [S, S], cropped frame
    full_masks: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> bool [S, S], full frame
    mirrored: bool = False  # flipped back to the display convention (masks said it was mirrored)


# What preparing one file may raise when the file (not the program) is at fault: the readers and
# the content checks here raise UnreadableImage naming the file (damaged, a compression no
# installed decoder reads, not a radiograph, uniform, ...); OSError and EOFError are a file that
# cannot be read at all (permissions, vanished, cut short under a decoder), DecompressionBombError
# a picture too large to decode. A job over an archive lists such files with the reason and goes
# on. Anything else (a ValueError, RuntimeError, MemoryError, ... of the program's own making) is
# a bug and propagates with its traceback. (pydicom's InvalidDicomError is not among them: the
# DICOM reader turns it into UnreadableImage.)
UNREADABLE_ERRORS = (UnreadableImage, OSError, EOFError, Image.DecompressionBombError)


def unreadable_reason(path: Path | str, exc: BaseException) -> str:
    """The reason a file could not be read, without the file name the readers put first."""
    text, path = str(exc) or type(exc).__name__, str(path)
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


def decode_radiograph(path: Path | str, image_format: str | None = None) -> Radiograph:
    """The raw pixels of one file and their polarity, by its format: JSRT's raw 12-bit `.IMG`
    (`image_format` "jsrt-img", or the .img suffix; white is zero), DICOM (a .dcm / .dicom
    suffix, or no known suffix and DICOM's marker: `readers.read_dicom`), else a picture read
    with Pillow. Errors name the file."""
    path = Path(path)
    kind = "jsrt-img" if image_format == "jsrt-img" else radiograph_kind(path)
    if kind == "jsrt-img":
        return Radiograph(read_jsrt_img(path), white_is_zero=True)
    if kind == "dicom":
        return read_dicom(path)
    if not path.exists():
        raise MissingInput(f"{path}: file not found")
    raw = read_gray(path)
    if raw.ndim != 2:
        raise UnreadableImage(f"{path}: expected a single-channel radiograph, got shape {raw.shape}")
    return Radiograph(raw)


def prepare_radiograph(radiograph: Radiograph | np.ndarray, image_size: int, *, source: Path | str,
                       crop_borders: bool = True,
                       structures: Mapping[str, np.ndarray] | None = None) -> PreparedRadiograph:
    """Orient -> find the content -> crop -> resize to `image_size` -> standardise one radiograph.

    `radiograph` comes from `decode_radiograph` (a bare array: gray levels already bone bright).
    Orientation, at full resolution: polarity (a white-is-zero image is inverted,
    `datasets.display_polarity`), and a mirrored case flipped back when its masks say so.
    `structures` (optional) are its masks by SCR structure name, at the image's size or any
    other covering the same frame (SCR masks are half the JSRT side); they follow the image
    through orientation and crop, and come back both cropped (`masks`, what training uses) and
    whole (`full_masks`, what scores are computed on). With `crop_borders=False` the whole
    frame is kept (the behaviour before the content crop). `source` names the file in errors.
    """
    if not isinstance(radiograph, Radiograph):
        radiograph = Radiograph(np.asarray(radiograph))
    pixels, oriented, mirrored = datasets.to_display_convention(
        radiograph.pixels, dict(structures or {}), white_is_zero=radiograph.white_is_zero,
        inversion_sum=radiograph.inversion_sum)
    crop = find_content_box(pixels, source) if crop_borders else CropBox.full(*pixels.shape)
    image = standardise(resize(pixels, image_size, crop.region_in(pixels.shape)), source)
    masks = {name: resize_mask(mask, image_size, crop.region_in(mask.shape)) for name, mask in oriented.items()}
    full_masks = {name: resize_mask(mask, image_size) for name, mask in oriented.items()} if crop.trimmed else masks
    return PreparedRadiograph(image=image, crop=crop, masks=masks, full_masks=full_masks, mirrored=mirrored)


def preprocess_file(path: Path | str, image_size: int, crop_borders: bool = True) -> PreparedRadiograph:
    """One radiograph file (no masks) as a network trained on cached data expects it; its full
    frame's size is (crop.height, crop.width)."""
    return prepare_radiograph(decode_radiograph(path), image_size, source=path, crop_borders=crop_borders)


def display_radiograph(path: Path | str) -> np.ndarray:
    """One radiograph file as displayed (oriented, bone bright), float32 at its own size."""
    radiograph = decode_radiograph(path)
    return datasets.display_polarity(radiograph.pixels, radiograph.white_is_zero, radiograph.inversion_sum)


def _resample_filter(source_shape: tuple[float, float], size: int) -> int:
    # Area averaging when shrinking (no aliasing of ribs and noise); bilinear when enlarging.
    return Image.BOX if min(source_shape) >= size else Image.BILINEAR


def _region_shape(array: np.ndarray, region: tuple[float, float, float, float] | None) -> tuple[float, float]:
    if region is None:
        return array.shape
    left, top, right, bottom = region
    return (bottom - top, right - left)


def resize(array: np.ndarray, size: int, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resize gray levels (or only `region` = (left, top, right, bottom) of them, sub-pixel) to
    float32 [size, size]; the aspect ratio is not kept, as in the paper."""
    resample = _resample_filter(_region_shape(array, region), size)
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    return np.asarray(image.resize((size, size), resample, box=region), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resize a binary mask (or `region` of it) to bool [size, size]: a pixel is foreground when at
    least half of it was."""
    resample = _resample_filter(_region_shape(mask, region), size)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), resample, box=region)
    return np.asarray(resized) >= 128


def standardise(image: np.ndarray, source: Path | str) -> np.ndarray:
    """Per-image standardisation: mean 0, std 1."""
    std = float(image.std())
    if not np.isfinite(std) or std < 1e-6:
        raise UnreadableImage(f"{source}: image has a single gray level; nothing to segment")
    return ((image - image.mean()) / std).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Back to the full frame.


class AxisSamples(NamedTuple):
    """How one axis of the whole frame samples the cropped S-pixel prediction: output pixels
    [first, last) fall inside the crop and interpolate linearly between source pixels `lower`
    and `upper` with `weight` on `upper` (float32); the others are 0."""

    first: int
    last: int
    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray


def frame_axis(count: int, frame_extent: int, start: int, stop: int, crop_side: int) -> AxisSamples:
    """The samples of one axis of `count` output pixels spanning a frame of `frame_extent`, whose
    crop runs from `start` to `stop` and was resized to `crop_side` pixels (edges held)."""
    centres = (np.arange(count, dtype=np.float64) + 0.5) * frame_extent / count
    inside = np.flatnonzero((centres >= start) & (centres < stop))
    if len(inside) == 0:
        empty = np.zeros(0, np.intp)
        return AxisSamples(0, 0, empty, empty, np.zeros(0, np.float32))
    first, last = int(inside[0]), int(inside[-1]) + 1
    coordinates = np.clip((centres[first:last] - start) / (stop - start) * crop_side - 0.5, 0, crop_side - 1)
    lower = np.floor(coordinates).astype(np.intp)
    upper = np.minimum(lower + 1, crop_side - 1)
    return AxisSamples(first, last, lower, upper, (coordinates - lower).astype(np.float32))


def _interpolate_along(array: np.ndarray, samples: AxisSamples, axis: int) -> np.ndarray:
    shape = [1, 1]
    shape[axis] = -1
    weight = samples.weight.reshape(shape)
    return np.take(array, samples.lower, axis=axis) * (1 - weight) + np.take(array, samples.upper, axis=axis) * weight


def mask_to_full_frame(mask: np.ndarray, crop: CropBox, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask predicted on the cropped S x S image, placed in the radiograph's full frame.

    `mask` is [S, S] in {0, 1} or a foreground probability in [0, 1]; it is resampled
    (bilinear, sub-pixel) onto the crop's place and thresholded at 0.5; outside the crop the
    result is 0. `size` = (height, width) of the output frame: default the original frame
    (crop.height x crop.width); (S, S) gives the full frame at the cache's size, where scores
    are computed. Returns uint8 {0, 1}. With an untrimmed crop and size (S, S) it returns the
    mask unchanged. (engine.evaluation.scoring applies the same samples to a batch on the device.)
    """
    if mask.ndim != 2:
        raise ValueError(f"expected one mask [S, S], got shape {mask.shape}")
    height, width = size if size is not None else (crop.height, crop.width)
    values = np.asarray(mask, dtype=np.float32)
    if not crop.trimmed and (height, width) == values.shape:
        return (values >= 0.5).astype(np.uint8)
    out = np.zeros((height, width), dtype=np.uint8)
    rows = frame_axis(height, crop.height, crop.top, crop.bottom, values.shape[0])
    cols = frame_axis(width, crop.width, crop.left, crop.right, values.shape[1])
    if rows.last > rows.first and cols.last > cols.first:
        placed = _interpolate_along(_interpolate_along(values, rows, 0), cols, 1)
        out[rows.first:rows.last, cols.first:cols.last] = placed >= 0.5
    return out


def any_trimmed(boxes: np.ndarray) -> bool:
    """Whether any of these crop boxes (rows of CROP_FIELDS) trimmed its image."""
    return any(CropBox.from_row(row).trimmed for row in boxes)


def crop_statistics(boxes: np.ndarray) -> dict:
    """Summary of a dataset's crop boxes (rows of CROP_FIELDS): how many were trimmed, on which
    sides, and how much of the frame was kept."""
    crops = [CropBox.from_row(row) for row in boxes]
    trimmed = [crop for crop in crops if crop.trimmed]
    kept = [crop.kept_fraction for crop in trimmed]
    return {
        "images": len(crops),
        "trimmed": len(trimmed),
        "sides": {side: sum(crop.side_widths()[side] > 0 for crop in trimmed) for side in SIDES},
        "kept_area_median": float(np.median(kept)) if kept else 1.0,
        "kept_area_min": float(min(kept)) if kept else 1.0,
    }


def describe_crop_statistics(name: str, stats: dict) -> str:
    if not stats["trimmed"]:
        return f"{name}: content crop trimmed none of {stats['images']} images (no borders found)"
    sides = ", ".join(f"{side} {count}" for side, count in stats["sides"].items() if count)
    return (f"{name}: content crop trimmed {stats['trimmed']} of {stats['images']} images ({sides}); kept area "
            f"median {100 * stats['kept_area_median']:.0f} %, min {100 * stats['kept_area_min']:.0f} %")
