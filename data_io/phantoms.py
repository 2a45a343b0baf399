"""Synthetic chest radiographs written in the real datasets' on-disk formats.

The phantoms stand in for JSRT + SCR (source) and Montgomery / Shenzhen (targets) when the real
data is not at hand: tests, the demo and CPU runs read them through exactly the same readers as
the real files. Anatomy (two lungs, heart, two clavicles, ribs, spine, soft tissue) is drawn from
one distribution for every domain; only the imaging differs.

The Montgomery-like target comes in two regimes (`TARGET_SHIFTS`):
- "severe" (the default): built to stay hard *after* per-image standardisation (which on
  real data removes most of the JSRT -> Montgomery gap): a strongly non-linear intensity
  response, inverted on every image by default (one consistent domain shift), a low-frequency
  multiplicative bias field, black collimation borders, different noise, and a slightly wider
  field of view at Montgomery's aspect ratio. A source-only segmenter scores little; a
  translator that learns the intensity mapping can recover the anatomy.
- "mild": the regime the real JSRT -> Montgomery shift lives in (a source-only segmenter keeps
  most of its accuracy): the source's polarity, another exposure curve, contrast and noise, a
  low-frequency bias field, bright collimation bands, a wider field of view and other patient
  scale, the film's 4020 x 4892 aspect ratio, and padding to a square with black bands (as the
  popular 512 x 512 re-packaging of Montgomery). `MildShift` holds its knobs, so each factor can
  be switched off to measure what it costs.
- "heldout": held out from design (augmentations and adaptation methods are designed on "mild"
  and "severe"; this one only confirms afterwards), so it models what real films from another
  hospital show and neither of the other two contains: burned-in text and lead markers, an
  effusion-like opacity in one lung on a share of the films (inside the lung mask, as in real
  truth masks), larger and smaller patients rotated further, a lower acquisition resolution
  upsampled smoothly, another exposure curve (windowed, with a shoulder), edge-enhancing /
  range-compressing processing and signal-dependent noise; the source's polarity, Montgomery's
  aspect ratio, no padding. `HeldOutShift` holds its knobs (`neutral` switches factors off).

Geometry convention: image coordinates run left to right and top to bottom; the patient's LEFT
side is on the image's RIGHT (a posterior-anterior film viewed as displayed). "Left"/"right"
in structure names are always the patient's sides.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_io.datasets import SCR_STRUCTURES
from errors import UserError

JSRT_MAX = 4095  # 12-bit
RENDER_MAX_SIDE = 512


@dataclass(frozen=True)
class Lung:
    side: int  # +1: patient's left (image right), -1: patient's right (image left)
    apex_y: float
    base_y: float
    medial: float
    lateral: float
    apex_fraction: float  # where the apex sits between medial and lateral
    dome: float
    wobble_amp: float
    wobble_freq: float
    wobble_phase: float


@dataclass(frozen=True)
class Anatomy:
    """One patient, in body coordinates: x in [-1, 1] (image left to right), y top to bottom."""

    lungs: tuple[Lung, Lung]
    heart_center: tuple[float, float]
    heart_radii: tuple[float, float]
    heart_angle: float
    clavicle_medial: tuple[float, float]  # (x, y) of the sternal end, patient's left side (x > 0)
    clavicle_lateral: tuple[float, float]
    clavicle_bow: float
    clavicle_thickness: float
    clavicle_asymmetry: float
    rib_spacing: float
    rib_phase: float
    rib_curvature: float
    body_width: float
    soft_tissue: float


@dataclass(frozen=True)
class Pose:
    """How the body sits in the detector: body = rotate(image - shift) / zoom."""

    zoom: float
    shift: tuple[float, float]
    angle: float


TARGET_SHIFTS = ("severe", "mild", "heldout")


@dataclass(frozen=True)
class MildShift:
    """The knobs of the mild Montgomery-like target; each range is sampled per image.

    The source (render_source) is a sigmoid of the attenuation with slope 5-7 and level
    0.38-0.48, noise 0.006-0.012, no bias, no borders, a square film framed with zoom 0.93-1.04.
    Setting a knob to its source-like value switches that factor off (see `neutral`).
    """

    # Exposure curve: a gamma on the attenuation, then a flatter sigmoid (lower contrast).
    gamma: tuple[float, float] = (0.75, 1.35)
    contrast: tuple[float, float] = (2.5, 4.0)
    level: tuple[float, float] = (0.30, 0.46)
    noise: tuple[float, float] = (0.02, 0.035)  # additive, display units
    bias: float = 0.25  # strength of the multiplicative low-frequency field
    # Geometry: a wider field of view (smaller patient in the film) and the film's aspect ratio.
    zoom: tuple[float, float] = (0.74, 0.90)
    shift: float = 0.06
    angle_deg: float = 5.0
    aspect: float = 4020 / 4892  # short / long side of the film (portrait or landscape)
    landscape: float = 0.25  # share of landscape films
    # Borders: bright collimation bands (unexposed film) and padding to a square.
    collimation: float = 0.5  # probability of a band on each side
    collimation_width: tuple[float, float] = (0.02, 0.07)  # fraction of the side
    pad_to_square: bool = True
    pad_one_side: float = 0.6  # share of padded films whose band lies on one side only

    def neutral(self, *factors: str) -> "MildShift":
        """This shift with the named factors made source-like: exposure, noise, bias, geometry,
        aspect, collimation, padding."""
        source_like = {
            "exposure": {"gamma": (1.0, 1.0), "contrast": (5.0, 7.0), "level": (0.38, 0.48)},
            "noise": {"noise": (0.006, 0.012)},
            "bias": {"bias": 0.0},
            "geometry": {"zoom": (0.93, 1.04), "shift": 0.04, "angle_deg": 3.0},
            "aspect": {"aspect": 1.0},
            "collimation": {"collimation": 0.0},
            "padding": {"pad_to_square": False},
        }
        unknown = sorted(set(factors) - set(source_like))
        if unknown:
            raise ValueError(f"unknown mild-shift factor(s) {', '.join(unknown)}; choose from {', '.join(source_like)}")
        changes = {key: value for factor in factors for key, value in source_like[factor].items()}
        return dataclasses.replace(self, **changes)


HELD_OUT_ANNOTATIONS = ("PA", "PA ERECT", "ERECT", "UPRIGHT", "INSP", "PA CHEST")


# The held-out shift's factors and their source-like knob values (HeldOutShift.neutral).
HELD_OUT_SOURCE_LIKE = {
    "markers": {"side_marker": 0.0, "annotation": 0.0, "lead_blocks": 0.0},
    "opacity": {"opacity": 0.0},
    "geometry": {"zoom": (0.93, 1.04), "shift": 0.04, "angle_deg": 3.0, "landscape_zoom": 1.0},
    "aspect": {"aspect": 1.0},
    "resolution": {"resolution": (1.0, 1.0)},
    "exposure": {"curve": "sigmoid"},
    "processing": {"edge_gain": (0.0, 0.0), "range_compression": (0.0, 0.0)},
    "noise": {"noise": (0.006, 0.012), "quantum": 0.0},
    "padding": {"pad_to_square": False},
}


@dataclass(frozen=True)
class HeldOutShift:
    """The knobs of the held-out Montgomery-like target; each range is sampled per image.

    Built to contain shifts that neither "mild" nor "severe" has (it is held out from design, so
    keep it that way: do not tune it to what a method handles). The source (render_source) is a
    sigmoid of the attenuation with slope 5-7 and level 0.38-0.48, additive noise 0.006-0.012 at
    the full resolution, a square film framed with zoom 0.93-1.04 and tilt up to 3 degrees, and
    nothing drawn on it. Setting a knob to its source-like value switches that factor off (see
    `neutral`).
    """

    # Burned-in marks (not in any mask): a lead side letter (R on the image's left, L on its right,
    # sometimes in a frame), a digital annotation such as "PA ERECT", small rectangular lead markers.
    side_marker: float = 0.9  # probability of the lead R / L letter
    annotation: float = 0.7  # probability of a burned-in text annotation
    lead_blocks: float = 0.4  # probability of each of two small rectangular lead markers
    marker_size: tuple[float, float] = (0.04, 0.06)  # font size, fraction of the long side
    # Pathology: an effusion-like opacity filling the lower part of one lung (the mask keeps it).
    opacity: float = 0.3  # share of films with one
    opacity_fill: tuple[float, float] = (0.2, 0.45)  # fraction of the lung's height it fills
    opacity_density: tuple[float, float] = (0.24, 0.34)  # added attenuation (lung darkness: 0.34)
    meniscus: tuple[float, float] = (0.06, 0.16)  # how far it climbs the lateral wall, body units
    # Geometry: larger and smaller patients than the source, rotated further; landscape films framed
    # wider. About one film in seven then has a lung reaching the film's edge (as with large patients).
    zoom: tuple[float, float] = (0.80, 1.08)
    shift: float = 0.06
    angle_deg: float = 12.0
    landscape_zoom: float = 0.88  # zoom factor of landscape films, so the chest fits their height
    aspect: float = 4020 / 4892  # short / long side of the film (portrait or landscape)
    landscape: float = 0.25  # share of landscape films
    # Acquisition: a coarser detector (rendered at this fraction of the size, then upsampled bicubically).
    resolution: tuple[float, float] = (0.35, 0.6)
    # Exposure: "shoulder" windows the attenuation to [black, white] then applies a concave
    # (1 - exp(-k x)) curve; "sigmoid" is the source's S-curve.
    curve: str = "shoulder"
    black: tuple[float, float] = (0.0, 0.10)
    white: tuple[float, float] = (0.88, 1.05)
    shoulder: tuple[float, float] = (0.8, 2.2)
    # Processing: unsharp-mask edge enhancement and low-frequency dynamic-range compression.
    edge_gain: tuple[float, float] = (0.3, 0.9)
    range_compression: tuple[float, float] = (0.1, 0.35)
    # Noise at the detector's resolution, stronger where fewer photons arrive (bright, dense parts).
    noise: tuple[float, float] = (0.012, 0.025)
    quantum: float = 0.7  # 0: additive; 1: proportional to twice the attenuation
    pad_to_square: bool = False  # optional black padding to a square (off: none in this regime)
    pad_one_side: float = 0.6

    def neutral(self, *factors: str) -> "HeldOutShift":
        """This shift with the named factors made source-like: markers, opacity, geometry, aspect,
        resolution, exposure, processing, noise, padding."""
        unknown = sorted(set(factors) - set(HELD_OUT_SOURCE_LIKE))
        if unknown:
            raise ValueError(f"unknown held-out-shift factor(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(HELD_OUT_SOURCE_LIKE)}")
        changes = {key: value for factor in factors for key, value in HELD_OUT_SOURCE_LIKE[factor].items()}
        return dataclasses.replace(self, **changes)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    lungs = []
    for side in (-1, +1):
        lungs.append(
            Lung(
                side=side,
                apex_y=rng.uniform(-0.74, -0.62),
                # The left hemidiaphragm usually sits a little lower than the right one.
                base_y=rng.uniform(0.40, 0.52) + (0.03 if side > 0 else 0.0),
                medial=rng.uniform(0.07, 0.12),
                lateral=rng.uniform(0.68, 0.80),
                apex_fraction=rng.uniform(0.25, 0.40),
                dome=rng.uniform(0.10, 0.20),
                wobble_amp=rng.uniform(0.0, 0.02),
                wobble_freq=rng.uniform(4.0, 9.0),
                wobble_phase=rng.uniform(0, 2 * math.pi),
            )
        )
    return Anatomy(
        lungs=(lungs[0], lungs[1]),
        heart_center=(rng.uniform(0.07, 0.15), rng.uniform(0.14, 0.24)),
        heart_radii=(rng.uniform(0.28, 0.35), rng.uniform(0.19, 0.25)),
        heart_angle=math.radians(rng.uniform(-35, -15)),
        clavicle_medial=(rng.uniform(0.06, 0.12), rng.uniform(-0.58, -0.50)),
        clavicle_lateral=(rng.uniform(0.72, 0.84), rng.uniform(-0.78, -0.66)),
        clavicle_bow=rng.uniform(0.02, 0.06),
        clavicle_thickness=rng.uniform(0.05, 0.07),
        clavicle_asymmetry=rng.uniform(-0.03, 0.03),
        rib_spacing=rng.uniform(0.095, 0.12),
        rib_phase=rng.uniform(0, 1),
        rib_curvature=rng.uniform(0.28, 0.42),
        body_width=rng.uniform(0.84, 0.94),
        soft_tissue=rng.uniform(0.85, 1.15),
    )


def _grid(height: int, width: int, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates of each pixel centre; the longer image side spans [-1, 1]."""
    longest = max(height, width)
    u = ((np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1) * (width / longest)
    v = ((np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1) * (height / longest)
    u = u[None, :] - pose.shift[0]
    v = v[:, None] - pose.shift[1]
    cos, sin = math.cos(pose.angle), math.sin(pose.angle)
    x = (cos * u + sin * v) / pose.zoom
    y = (-sin * u + cos * v) / pose.zoom
    return x.astype(np.float32), y.astype(np.float32)


def _ramp(distance: np.ndarray, width: float) -> np.ndarray:
    """0 outside, 1 deeper than `width` inside; `distance` > 0 means inside."""
    return np.clip(distance / width, 0.0, 1.0)


def _lung_depth(lung: Lung, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed depth inside the lung field (> 0 inside), in body units."""
    lateral_x = lung.side * x  # distance from the midline towards this lung's outer side
    span = lung.base_y - lung.apex_y
    t = (y - lung.apex_y) / span
    apex_x = lung.medial + lung.apex_fraction * (lung.lateral - lung.medial)
    wobble = lung.wobble_amp * np.sin(lung.wobble_freq * y + lung.wobble_phase)
    t_clip = np.clip(t, 0.0, 1.0)
    # Rounded apex: the edges open like quarter circles, then run down to the base.
    outer_open = np.sqrt(np.clip(1 - (1 - np.minimum(t_clip / 0.75, 1.0)) ** 2, 0, 1))
    outer = apex_x + (lung.lateral - apex_x) * outer_open - 0.04 * np.clip((t_clip - 0.75) / 0.25, 0, 1) + wobble
    inner_open = np.sqrt(np.clip(1 - (1 - np.minimum(t_clip / 0.3, 1.0)) ** 2, 0, 1))
    inner = apex_x - (apex_x - lung.medial) * inner_open
    # The diaphragm dome rises medially; the costophrenic angle is the lowest lateral point.
    dome_center = lung.medial + 0.4 * (lung.lateral - lung.medial)
    dome_width = 0.38 * (lung.lateral - lung.medial)
    diaphragm = lung.base_y - lung.dome * np.exp(-(((lateral_x - dome_center) / dome_width) ** 2))
    depth = np.minimum(outer - lateral_x, lateral_x - inner)
    depth = np.minimum(depth, y - lung.apex_y)
    depth = np.minimum(depth, diaphragm - y)
    return depth


def _heart_depth(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = anatomy.heart_center
    rx, ry = anatomy.heart_radii
    cos, sin = math.cos(anatomy.heart_angle), math.sin(anatomy.heart_angle)
    dx, dy = x - cx, y - cy
    a = (cos * dx + sin * dy) / rx
    b = (-sin * dx + cos * dy) / ry
    # Approximate signed distance of an ellipse, good enough for soft edges.
    return (1 - np.sqrt(a * a + b * b)) * min(rx, ry)


def _clavicle_depth(anatomy: Anatomy, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    mx, my = anatomy.clavicle_medial
    lx, ly = anatomy.clavicle_lateral
    shift = anatomy.clavicle_asymmetry * side
    my, ly = my + shift, ly + shift
    lateral_x = side * x
    t = (lateral_x - mx) / (lx - mx)
    # A shallow S: a parabola from the sternal end to the shoulder, bowed downwards.
    center = my + (ly - my) * t + anatomy.clavicle_bow * 4 * t * (1 - t)
    half = anatomy.clavicle_thickness * (0.6 + 0.4 * np.clip(t, 0, 1)) / 2
    depth = half - np.abs(y - center)
    along = np.minimum(t, 1 - t) * abs(lx - mx)
    return np.minimum(depth, along)


def _structure_depths(anatomy: Anatomy, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    right_lung, left_lung = anatomy.lungs  # patient's right first (image left)
    return {
        "right lung": _lung_depth(right_lung, x, y),
        "left lung": _lung_depth(left_lung, x, y),
        "heart": _heart_depth(anatomy, x, y),
        "right clavicle": _clavicle_depth(anatomy, -1, x, y),
        "left clavicle": _clavicle_depth(anatomy, +1, x, y),
    }


def render_masks(anatomy: Anatomy, pose: Pose, height: int, width: int) -> dict[str, np.ndarray]:
    """SCR-style binary masks (patient's sides); lung fields exclude the heart, as in SCR."""
    x, y = _grid(height, width, pose)
    depths = _structure_depths(anatomy, x, y)
    heart = depths["heart"] > 0
    masks = {}
    for name in SCR_STRUCTURES:
        inside = depths[name] > 0
        if name.endswith("lung"):
            inside &= ~heart
        masks[name] = inside
    return masks


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish std noise with features about 1/cells of the image."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    return np.asarray(field, dtype=np.float32)


def render_attenuation(anatomy: Anatomy, pose: Pose, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Display brightness before the detector response: bone and soft tissue bright, lungs dark.

    Large films are drawn at most RENDER_MAX_SIDE px and upsampled: the anatomy holds no finer
    detail, and full-size (2048 px) phantoms then take a fraction of a second each. Noise is
    added later at the full size.
    """
    longest = max(height, width)
    if longest > RENDER_MAX_SIDE:
        scale = RENDER_MAX_SIDE / longest
        small = render_attenuation(anatomy, pose, max(1, round(height * scale)), max(1, round(width * scale)), rng)
        return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
    x, y = _grid(height, width, pose)
    depths = _structure_depths(anatomy, x, y)
    lungs = np.maximum(_ramp(depths["right lung"], 0.06), _ramp(depths["left lung"], 0.06))
    heart = _ramp(depths["heart"], 0.03)
    clavicles = np.maximum(_ramp(depths["right clavicle"], 0.012), _ramp(depths["left clavicle"], 0.012))

    # Torso narrows to the neck above the shoulders.
    neck = np.clip((y + 0.95) / 0.45, 0, 1)
    torso_half_width = 0.2 + (anatomy.body_width - 0.2) * (3 * neck**2 - 2 * neck**3)
    body = _ramp(torso_half_width - np.abs(x), 0.08)
    # Thicker soft tissue towards the body's sides and the abdomen below the diaphragm.
    abdomen = np.clip((y - 0.35) / 0.25, 0, 1) * (1 - lungs)
    mediastinum = _ramp(0.13 - np.abs(x - 0.02), 0.05) * np.clip((y + 0.8) / 0.2, 0, 1)

    lateral = np.abs(x)
    rib_zone = _ramp(0.86 - lateral, 0.05) * _ramp(y + 0.7, 0.05) * _ramp(0.55 - y, 0.1)
    rib_phase = (y - anatomy.rib_curvature * lateral**2 + 0.1 * lateral) / anatomy.rib_spacing + anatomy.rib_phase
    rib_profile = np.clip(1 - np.abs(rib_phase - np.floor(rib_phase) - 0.5) / 0.22, 0, 1) ** 0.6
    anterior_phase = (y + 0.25 * lateral) / (anatomy.rib_spacing * 1.3) + anatomy.rib_phase * 0.7
    anterior_profile = np.clip(1 - np.abs(anterior_phase - np.floor(anterior_phase) - 0.5) / 0.15, 0, 1)
    ribs = rib_zone * (rib_profile + 0.35 * anterior_profile * np.clip(lateral / 0.5, 0, 1))
    vertebra_phase = y / 0.085
    spine = _ramp(0.06 - np.abs(x), 0.02) * (0.7 + 0.3 * np.cos(2 * np.pi * vertebra_phase) ** 2)

    texture = _smooth_noise(rng, height, width, 24)
    fine_texture = _smooth_noise(rng, height, width, 96)
    vessels_raw = _smooth_noise(rng, height, width, 40)
    hilum_distance = np.sqrt((lateral - 0.15) ** 2 + (y + 0.05) ** 2)
    vessels = np.clip(1 - np.abs(vessels_raw) / 0.35, 0, 1) * np.exp(-hilum_distance / 0.35)

    attenuation = (
        0.04
        + 0.50 * anatomy.soft_tissue * body
        + 0.08 * body * lateral
        + 0.12 * abdomen * body
        + 0.12 * mediastinum
        - 0.34 * lungs
        + 0.22 * heart * (0.5 + 0.5 * lungs)
        + 0.13 * ribs * body
        + 0.28 * clavicles
        + 0.18 * spine * (1 - 0.5 * lungs)
        + 0.08 * vessels * lungs
        + 0.025 * texture * body
        + 0.012 * fine_texture * body
    )
    return np.clip(attenuation, 0.0, 1.0).astype(np.float32)


def _source_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        zoom=rng.uniform(0.93, 1.04),
        shift=(rng.uniform(-0.04, 0.04), rng.uniform(-0.02, 0.06)),
        angle=math.radians(rng.uniform(-3, 3)),
    )


def _montgomery_pose(rng: np.random.Generator, height: int, width: int) -> Pose:
    # Framed much like JSRT (the real Montgomery films are too): a slightly wider field of view,
    # a little off-centre and tilted. A landscape frame zooms out a bit more so the chest fits
    # its shorter height. The geometry is not what makes this target hard: the detector is.
    zoom = rng.uniform(0.80, 0.92) if width > height else rng.uniform(0.85, 1.0)
    return Pose(
        zoom=zoom,
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.06)),
        angle=math.radians(rng.uniform(-4, 4)),
    )


def _mild_pose(rng: np.random.Generator, shift: MildShift) -> Pose:
    # Another department's framing: the patient smaller in a wider field of view, off-centre.
    return Pose(
        zoom=rng.uniform(*shift.zoom),
        shift=(rng.uniform(-shift.shift, shift.shift), rng.uniform(-0.7 * shift.shift, shift.shift)),
        angle=math.radians(rng.uniform(-shift.angle_deg, shift.angle_deg)),
    )


def _heldout_pose(rng: np.random.Generator, shift: HeldOutShift, height: int, width: int) -> Pose:
    # Larger and smaller patients than the source, rotated further; landscape films framed wider.
    zoom = rng.uniform(*shift.zoom) * (shift.landscape_zoom if width > height else 1.0)
    return Pose(
        zoom=zoom,
        shift=(rng.uniform(-shift.shift, shift.shift), rng.uniform(-0.7 * shift.shift, shift.shift)),
        angle=math.radians(rng.uniform(-shift.angle_deg, shift.angle_deg)),
    )

def _shenzhen_pose(rng: np.random.Generator, height: int, width: int) -> Pose:
    # Wider field of view than JSRT: shoulders, neck and upper abdomen in view, off-centre.
    zoom = rng.uniform(0.62, 0.74) if width > height else rng.uniform(0.72, 0.86)
    return Pose(
        zoom=zoom,
        shift=(rng.uniform(-0.08, 0.08), rng.uniform(-0.10, 0.08)),
        angle=math.radians(rng.uniform(-6, 6)),
    )


def render_source(attenuation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """JSRT-like film: a mild S-curve, fine quantum noise, stored 'white is zero' in 12 bits."""
    contrast = rng.uniform(5.0, 7.0)
    level = rng.uniform(0.38, 0.48)
    display = 1 / (1 + np.exp(-contrast * (attenuation - level)))
    display += rng.uniform(0.006, 0.012) * rng.standard_normal(display.shape, dtype=np.float32)
    display = np.clip(display, 0, 1)
    return np.round(JSRT_MAX * (1 - display)).astype(np.uint16)


def render_target(
    attenuation: np.ndarray, rng: np.random.Generator, bits_max: int, style: str, inverted_fraction: float = 1.0
) -> np.ndarray:
    """The target detector: what a source-only segmenter has never seen, whatever the normalisation."""
    height, width = attenuation.shape
    if style == "montgomery":
        # A strongly non-linear response (gamma 0.5 to 2), inverted (lungs bright, as archives
        # storing negatives show them) on `inverted_fraction` of the images: by default all of
        # them, a consistent shift like the real JSRT -> Montgomery one. Standardisation undoes
        # neither; a translator can learn both. Below 1 the target becomes bimodal, which one
        # translator with a fixed style code at inference cannot serve.
        response = (attenuation ** np.exp(rng.uniform(math.log(0.5), math.log(2.0)))).astype(np.float32)
        if rng.random() < inverted_fraction:
            response = 1.0 - response
        bias_strength, noise_sigma, stripes = 0.45, 0.035, 0.03
    else:
        # Shenzhen-like: monotonic but strongly gamma-compressed, milder bias, coarser noise.
        response = (attenuation ** rng.uniform(2.0, 2.8)).astype(np.float32)
        bias_strength, noise_sigma, stripes = 0.3, 0.025, 0.0
    bias = np.exp(bias_strength * _smooth_noise(rng, height, width, 3))
    response = response * bias
    # Signal-dependent (speckle-like) noise plus line artefacts of a different detector.
    response *= 1 + noise_sigma * rng.standard_normal(response.shape, dtype=np.float32)
    if stripes:
        response += stripes * rng.standard_normal((height, 1)).astype(np.float32)
    response = np.clip(response / max(float(np.percentile(response, 99.5)), 1e-6), 0, 1)
    image = response * bits_max
    # Collimator edges: black bands of random width on some sides.
    for side in range(4):
        if rng.random() < 0.6:
            band = int(rng.uniform(0.01, 0.07) * (height if side < 2 else width))
            if side == 0:
                image[:band] = 0
            elif side == 1:
                image[height - band :] = 0
            elif side == 2:
                image[:, :band] = 0
            else:
                image[:, width - band :] = 0
    return np.round(image).astype(np.uint16)


def render_mild_target(attenuation: np.ndarray, rng: np.random.Generator, bits_max: int,
                       shift: MildShift) -> np.ndarray:
    """The mild target's detector: the source's polarity, another exposure curve, contrast, noise
    and bias field, then bright collimation bands (unexposed film) on some sides."""
    height, width = attenuation.shape
    gamma, contrast, level = (rng.uniform(*shift.gamma), rng.uniform(*shift.contrast), rng.uniform(*shift.level))
    noise_sigma = rng.uniform(*shift.noise)
    # Drawn whatever the strength, so that switching one factor off leaves the others' draws alone.
    field = _smooth_noise(rng, height, width, 3)
    exposure = np.clip(attenuation * np.exp(shift.bias * field), 0.0, 1.0) ** gamma
    display = 1 / (1 + np.exp(-contrast * (exposure - level)))
    display += noise_sigma * rng.standard_normal(display.shape, dtype=np.float32)
    for side in range(4):
        present, fraction, brightness = (rng.random() < shift.collimation, rng.uniform(*shift.collimation_width),
                                         rng.uniform(0.9, 0.98))
        if not present:
            continue
        band = max(1, int(fraction * (height if side < 2 else width)))
        region = ((slice(0, band), slice(None)) if side == 0
                  else (slice(height - band, None), slice(None)) if side == 1
                  else (slice(None), slice(0, band)) if side == 2
                  else (slice(None), slice(width - band, None)))
        # Unexposed film: bright, with a little detector noise and no anatomy.
        display[region] = brightness + 0.004 * rng.standard_normal(display[region].shape, dtype=np.float32)
    return np.round(np.clip(display, 0, 1) * bits_max).astype(np.uint16)


@dataclass(frozen=True)
class Effusion:
    """An effusion-like opacity: fluid filling the lower part of one lung, its surface climbing
    the lateral wall (the meniscus)."""

    lung: int  # index into Anatomy.lungs (0: patient's right, image left)
    fill: float  # fraction of the lung's height below the fluid level at the medial side
    density: float  # added attenuation
    meniscus: float  # how far the surface rises towards the lateral wall, body units
    softness: float  # width of the surface's blurred edge, body units


def _effusion_field(anatomy: Anatomy, pose: Pose, height: int, width: int, effusion: Effusion) -> np.ndarray:
    """Added attenuation of `effusion` on a height x width film (the lung mask is unchanged)."""
    x, y = _grid(height, width, pose)
    lung = anatomy.lungs[effusion.lung]
    span = lung.base_y - lung.apex_y
    lateral_t = np.clip((lung.side * x - lung.medial) / (lung.lateral - lung.medial), 0.0, 1.0)
    surface = lung.base_y - effusion.fill * span - effusion.meniscus * lateral_t**2
    below = y - surface
    fluid = np.clip(below / effusion.softness, 0.0, 1.0)
    fluid = fluid * fluid * (3 - 2 * fluid)
    # Slightly denser at the bottom; spills a little past the lung edge (blunted costophrenic
    # angle, hemidiaphragm effaced).
    denser = 0.8 + 0.2 * np.clip(below / max(effusion.fill * span, 1e-3), 0.0, 1.0)
    inside = _ramp(_lung_depth(lung, x, y) + 0.03, 0.04)
    return (effusion.density * fluid * denser * inside).astype(np.float32)


def _heldout_exposure(attenuation: np.ndarray, curve: str, knobs: dict[str, float]) -> np.ndarray:
    if curve == "sigmoid":  # the source's curve (render_source)
        return 1 / (1 + np.exp(-knobs["contrast"] * (attenuation - knobs["level"])))
    if curve != "shoulder":
        raise ValueError(f"HeldOutShift.curve must be 'shoulder' or 'sigmoid', got {curve!r}")
    windowed = np.clip((attenuation - knobs["black"]) / (knobs["white"] - knobs["black"]), 0.0, 1.0)
    k = knobs["shoulder"]
    return (1 - np.exp(-k * windowed)) / (1 - math.exp(-k))


def render_heldout_target(attenuation: np.ndarray, rng: np.random.Generator, shift: HeldOutShift,
                          size: tuple[int, int]) -> np.ndarray:
    """The held-out target's detector, display units in [0, 1] at `size` (height, width):
    `attenuation` is drawn at the detector's (lower) resolution; exposure curve, processing and
    noise happen there, then a bicubic upsampling to the film's size. Every knob is drawn
    whatever the factor's setting, so switching one factor off leaves the others' draws alone."""
    from scipy import ndimage  # here, not at the top: the CLI imports this module at start-up

    knobs = {
        "black": rng.uniform(*shift.black), "white": rng.uniform(*shift.white),
        "shoulder": rng.uniform(*shift.shoulder),
        "contrast": rng.uniform(5.0, 7.0), "level": rng.uniform(0.38, 0.48),
    }
    edge_gain, compression = rng.uniform(*shift.edge_gain), rng.uniform(*shift.range_compression)
    noise_sigma = rng.uniform(*shift.noise)
    display = _heldout_exposure(attenuation, shift.curve, knobs).astype(np.float32)
    side = max(display.shape)
    if edge_gain:
        display = display + edge_gain * (display - ndimage.gaussian_filter(display, 0.012 * side, mode="nearest"))
    if compression:
        low = ndimage.gaussian_filter(display, 0.08 * side, mode="nearest")
        display = display - compression * (low - float(low.mean()))
    sigma = noise_sigma * (1 - shift.quantum + 2 * shift.quantum * attenuation)
    display = display + sigma * rng.standard_normal(display.shape, dtype=np.float32)
    height, width = size
    if display.shape != (height, width):
        display = np.asarray(Image.fromarray(display.astype(np.float32)).resize((width, height), Image.BICUBIC))
    return np.clip(display, 0.0, 1.0).astype(np.float32)


def _font(pixels: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=pixels)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _glyph(text: str, pixels: int, frame: bool) -> np.ndarray:
    """`text` in white on black, tightly cropped (with a frame around it when asked), float [0, 1]."""
    font, stroke = _font(pixels), max(1, round(pixels / 14))  # bold, as lead letters and burned-in text are
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font, stroke_width=stroke)
    pad = max(1, pixels // 5) if frame else 0
    line = max(1, pixels // 10)
    canvas = Image.new("L", (right - left + 2 * pad + 2 * line * frame, bottom - top + 2 * pad + 2 * line * frame))
    draw = ImageDraw.Draw(canvas)
    offset = pad + line * frame
    draw.text((offset - left, offset - top), text, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if frame:
        draw.rectangle((0, 0, canvas.width - 1, canvas.height - 1), outline=255, width=line)
    return np.asarray(canvas, dtype=np.float32) / 255


def _place(layer: np.ndarray, mark: np.ndarray, forbidden: np.ndarray, rng: np.random.Generator,
           corner: tuple[str, str], reach: tuple[float, float], tries: int = 20) -> bool:
    """Put `mark` into `layer` near `corner` ("top"/"bottom", "left"/"right"/"any"), its box at
    most `reach` (fractions of height, width) from those edges and clear of `forbidden`."""
    height, width = layer.shape
    mark_h, mark_w = mark.shape
    if mark_h >= height or mark_w >= width:
        return False
    for _ in range(tries):
        gap_y = int(rng.uniform(0.015, reach[0]) * height)
        top = gap_y if corner[0] == "top" else height - mark_h - gap_y
        if corner[1] == "any":
            left = int(rng.uniform(0.05, 0.95) * (width - mark_w))
        else:
            gap_x = int(rng.uniform(0.015, reach[1]) * width)
            left = gap_x if corner[1] == "left" else width - mark_w - gap_x
        if top < 0 or left < 0 or top + mark_h > height or left + mark_w > width:
            continue
        window = (slice(top, top + mark_h), slice(left, left + mark_w))
        if forbidden[window].any():
            continue
        layer[window] = np.maximum(layer[window], mark)
        forbidden[window] = True
        return True
    return False


def draw_markers(display: np.ndarray, lungs: np.ndarray, rng: np.random.Generator, shift: HeldOutShift,
                 resolution: float) -> np.ndarray:
    """Burn saturated (white) markers into `display` near its edges and corners, clear of `lungs`:
    a lead R / L letter on the side it names, a digital annotation, small rectangular lead markers.
    Lead is imaged by the (coarser) detector, so its marks are blurred; the text is sharp."""
    from scipy import ndimage
    height, width = display.shape
    longest = max(height, width)
    lead_blur = 0.4 / resolution
    halo = int(math.ceil(3 * lead_blur)) + 1
    # Clear of the lungs by a margin (and of the blur's halo), so no mask holds a marker.
    forbidden = ndimage.distance_transform_edt(~lungs) <= max(2, round(0.015 * longest)) + halo
    lead, text = np.zeros_like(display), np.zeros_like(display)
    pixels = max(7, round(rng.uniform(*shift.marker_size) * longest))
    # The technologist's lead side letter: R on the patient's right (the image's left), L opposite.
    present, letter, framed, low = (rng.random() < shift.side_marker, rng.random() < 0.5, rng.random() < 0.5,
                                    rng.random() < 0.3)
    if present:
        mark = _glyph("L" if letter else "R", pixels, framed)
        _place(lead, np.pad(mark, halo), forbidden, rng, ("bottom" if low else "top", "right" if letter else "left"),
               (0.3, 0.12))
    present, choice, corner = (rng.random() < shift.annotation, int(rng.integers(len(HELD_OUT_ANNOTATIONS))),
                               int(rng.integers(4)))
    if present:
        mark = _glyph(HELD_OUT_ANNOTATIONS[choice], max(7, round(pixels * 0.8)), False)
        _place(text, np.pad(mark, 1), forbidden, rng, (("top", "bottom")[corner // 2], ("left", "right")[corner % 2]),
               (0.08, 0.08))
    for _ in range(2):
        present, edge = rng.random() < shift.lead_blocks, int(rng.integers(2))
        block_h, block_w = (max(2, round(rng.uniform(lo, hi) * longest)) for lo, hi in ((0.012, 0.03), (0.02, 0.05)))
        if present:
            _place(lead, np.pad(np.ones((block_h, block_w), np.float32), halo), forbidden, rng,
                   (("top", "bottom")[edge], "any"), (0.06, 0.0))
    if lead.any():
        # Lead stops the beam: saturated across the mark, blurred at its edges.
        lead = np.clip(ndimage.gaussian_filter(lead, lead_blur) * 1.6, 0.0, 1.0)
    alpha = np.maximum(lead, text)
    return display * (1 - alpha) + alpha

def pad_to_square(array: np.ndarray, rng: np.random.Generator, one_side: float) -> np.ndarray:
    """Zero bands along the short side up to a square, as the 512 x 512 re-packaging of Montgomery
    does: all on one side for a share `one_side` of the films, else split at random."""
    height, width = array.shape
    total = abs(height - width)
    before = (total if rng.random() < 0.5 else 0) if rng.random() < one_side else int(rng.integers(0, total + 1))
    if height > width:
        return np.pad(array, ((0, 0), (before, total - before)))
    return np.pad(array, ((before, total - before), (0, 0)))


def _jsrt_ids(count: int) -> list[str]:
    """JSRT naming: nodule cases JPCLNnnn first (154 of 247), then non-nodule JPCNNnnn."""
    nodules = round(count * 154 / 247)
    return [f"JPCLN{i + 1:03d}" for i in range(nodules)] + [f"JPCNN{i + 1:03d}" for i in range(count - nodules)]


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_source(out: Path, count: int, size: int, rng: np.random.Generator) -> tuple[Path, Path]:
    if size % 2:
        raise UserError(f"source_size must be even (SCR masks are half the image side), got {size}")
    jsrt_dir, scr_dir = out / "jsrt", out / "scr"
    jsrt_dir.mkdir(parents=True, exist_ok=True)
    ids = _jsrt_ids(count)
    for index, case_id in enumerate(ids):
        anatomy, pose = sample_anatomy(rng), _source_pose(rng)
        stored = render_source(render_attenuation(anatomy, pose, size, size, rng), rng)
        stored.astype(">u2").tofile(jsrt_dir / f"{case_id}.IMG")
        fold = "fold1" if index % 2 == 0 else "fold2"
        for structure, mask in render_masks(anatomy, pose, size // 2, size // 2).items():
            target = scr_dir / fold / "masks" / structure / f"{case_id}.gif"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(target)
    return jsrt_dir, scr_dir


def _target_shape(rng: np.random.Generator, long_side: int, aspect: float = 4020 / 4892,
                  landscape: float = 0.25) -> tuple[int, int]:
    # Montgomery: 4892 x 4020 portrait or landscape; keep that ratio at the requested size.
    short_side = int(round(long_side * aspect / 4)) * 4
    return (long_side, short_side) if rng.random() < 1 - landscape else (short_side, long_side)


def _montgomery_case_id(index: int, rng: np.random.Generator) -> str:
    return f"MCUCXR_{index + 1:04d}_{int(rng.random() < 0.42)}"


def _save_montgomery_case(root: Path, case_id: str, image: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    # 12-bit values in a 16-bit PNG, as in the original release; one mask per lung.
    _save_png(image, root / "CXR_png" / f"{case_id}.png")
    _save_png(masks["left lung"].astype(np.uint8) * 255, root / "ManualMask" / "leftMask" / f"{case_id}.png")
    _save_png(masks["right lung"].astype(np.uint8) * 255, root / "ManualMask" / "rightMask" / f"{case_id}.png")


def _write_montgomery(out: Path, count: int, long_side: int, rng: np.random.Generator,
                      inverted_fraction: float) -> Path:
    """The severe regime."""
    root = out / "montgomery"
    for index in range(count):
        case_id = _montgomery_case_id(index, rng)
        height, width = _target_shape(rng, long_side)
        anatomy, pose = sample_anatomy(rng), _montgomery_pose(rng, height, width)
        attenuation = render_attenuation(anatomy, pose, height, width, rng)
        image = render_target(
            attenuation, rng, bits_max=int(rng.uniform(3000, 4095)), style="montgomery",
            inverted_fraction=inverted_fraction
        )
        _save_montgomery_case(root, case_id, image, render_masks(anatomy, pose, height, width))
    return root


def _write_mild_montgomery(out: Path, count: int, long_side: int, rng: np.random.Generator, shift: MildShift) -> Path:
    """The mild regime. Each case draws anatomy, framing, detector and borders from streams of its
    own, so switching one factor of `shift` off leaves everything else about the case unchanged."""
    root = out / "montgomery"
    for index in range(count):
        case_id = _montgomery_case_id(index, rng)
        anatomy_rng, frame_rng, detector_rng, border_rng = (
            np.random.default_rng(child) for child in np.random.SeedSequence(int(rng.integers(2**63))).spawn(4)
        )
        anatomy = sample_anatomy(anatomy_rng)
        height, width = _target_shape(frame_rng, long_side, shift.aspect, shift.landscape)
        pose = _mild_pose(frame_rng, shift)
        attenuation = render_attenuation(anatomy, pose, height, width, detector_rng)
        image = render_mild_target(attenuation, detector_rng, int(detector_rng.uniform(3000, 4095)), shift)
        masks = render_masks(anatomy, pose, height, width)
        if shift.pad_to_square and height != width:
            # One draw of the offsets for the image and its masks.
            state = border_rng.bit_generator.state
            image = pad_to_square(image, border_rng, shift.pad_one_side)
            padded = {}
            for name, mask in masks.items():
                border_rng.bit_generator.state = state
                padded[name] = pad_to_square(mask, border_rng, shift.pad_one_side)
            masks = padded
        _save_montgomery_case(root, case_id, image, masks)
    return root


def _write_heldout_montgomery(out: Path, count: int, long_side: int, rng: np.random.Generator,
                              shift: HeldOutShift) -> Path:
    """The held-out regime. Each case draws anatomy, framing, detector, pathology, markers and
    borders from streams of its own, so switching one factor of `shift` off leaves everything
    else about the case unchanged."""
    root = out / "montgomery"
    for index in range(count):
        case_id = _montgomery_case_id(index, rng)
        anatomy_rng, frame_rng, detector_rng, pathology_rng, marker_rng, border_rng = (
            np.random.default_rng(child) for child in np.random.SeedSequence(int(rng.integers(2**63))).spawn(6)
        )
        anatomy = sample_anatomy(anatomy_rng)
        height, width = _target_shape(frame_rng, long_side, shift.aspect, shift.landscape)
        pose = _heldout_pose(frame_rng, shift, height, width)
        resolution, bits_max = detector_rng.uniform(*shift.resolution), int(detector_rng.uniform(3000, 4095))
        small = ((max(16, round(height * resolution)), max(16, round(width * resolution))) if resolution < 1
                 else (height, width))
        attenuation = render_attenuation(anatomy, pose, *small, detector_rng)
        effusion = Effusion(
            lung=int(pathology_rng.integers(2)), fill=pathology_rng.uniform(*shift.opacity_fill),
            density=pathology_rng.uniform(*shift.opacity_density), meniscus=pathology_rng.uniform(*shift.meniscus),
            softness=pathology_rng.uniform(0.03, 0.07),
        )
        if pathology_rng.random() < shift.opacity:
            attenuation = np.clip(attenuation + _effusion_field(anatomy, pose, *small, effusion), 0.0, 1.0)
        display = render_heldout_target(attenuation, detector_rng, shift, (height, width))
        masks = render_masks(anatomy, pose, height, width)
        display = draw_markers(display, masks["left lung"] | masks["right lung"], marker_rng, shift,
                               min(resolution, 1.0))
        image = np.round(np.clip(display, 0, 1) * bits_max).astype(np.uint16)
        if shift.pad_to_square and height != width:
            state = border_rng.bit_generator.state
            image = pad_to_square(image, border_rng, shift.pad_one_side)
            padded = {}
            for name, mask in masks.items():
                border_rng.bit_generator.state = state
                padded[name] = pad_to_square(mask, border_rng, shift.pad_one_side)
            masks = padded
        _save_montgomery_case(root, case_id, image, masks)
    return root

def _write_shenzhen(out: Path, count: int, long_side: int, rng: np.random.Generator) -> Path:
    root = out / "shenzhen"
    # About one in seven real Shenzhen images has no lung mask; keep at least one of each kind.
    missing = set(rng.choice(count, size=max(1, count // 7), replace=False).tolist()) if count > 1 else set()
    for index in range(count):
        case_id = f"CHNCXR_{index + 1:04d}_{int(rng.random() < 0.5)}"
        side = int(round(long_side * rng.uniform(0.9, 1.0) / 4)) * 4
        anatomy, pose = sample_anatomy(rng), _shenzhen_pose(rng, side, side)
        attenuation = render_attenuation(anatomy, pose, side, side, rng)
        image = render_target(attenuation, rng, bits_max=255, style="shenzhen").astype(np.uint8)
        _save_png(image, root / "CXR_png" / f"{case_id}.png")
        if index not in missing:
            masks = render_masks(anatomy, pose, side, side)
            merged = (masks["left lung"] | masks["right lung"]).astype(np.uint8) * 255
            _save_png(merged, root / "mask" / f"{case_id}_mask.png")
    return root


def synthesize(
    out_dir: str | Path,
    n_source: int = 40,
    n_target: int = 30,
    n_shenzhen: int = 0,
    source_size: int = 512,
    target_size: int = 512,
    seed: int = 0,
    target_inverted_fraction: float | None = None,
    target_shift: str | MildShift | HeldOutShift = "severe",
) -> dict[str, Path]:
    """Write phantom datasets under `out_dir`; returns {"jsrt", "scr", "montgomery"[, "shenzhen"]} folders.

    `source_size` is the side of the square JSRT-like `.IMG` (SCR masks are half of it, as in
    the real data); `target_size` is the long side of the Montgomery-like 16-bit PNGs (short
    side at the real 4020 / 4892 ratio; the mild regime pads them to a target_size square) and
    about the side of the Shenzhen-like 8-bit PNGs.
    `target_shift` is "severe" (default), "mild", "heldout", a `MildShift` (the mild regime with
    other knobs) or a `HeldOutShift` (the held-out regime with other knobs; no padding by
    default, so its films keep Montgomery's aspect ratio). `target_inverted_fraction` (severe
    only) of the Montgomery-like images get an inverted response (lungs bright). The default 1
    is a consistent shift a translator can learn; 0 keeps the display polarity (an easier
    target); values in between make the target bimodal.
    Each domain draws from its own random stream, so changing one count leaves the others' files unchanged.
    """
    if n_source < 1 or n_target < 0 or n_shenzhen < 0:
        raise UserError(f"phantom counts must be n_source >= 1, n_target >= 0, n_shenzhen >= 0; "
                        f"got {n_source}, {n_target}, {n_shenzhen}")
    if isinstance(target_shift, str) and target_shift not in TARGET_SHIFTS:
        raise UserError(f"target_shift must be one of {', '.join(TARGET_SHIFTS)} (or a MildShift or HeldOutShift), "
                        f"got {target_shift!r}")
    mild = MildShift() if target_shift == "mild" else target_shift if isinstance(target_shift, MildShift) else None
    held_out = (HeldOutShift() if target_shift == "heldout"
                else target_shift if isinstance(target_shift, HeldOutShift) else None)
    if (mild is not None or held_out is not None) and target_inverted_fraction is not None:
        raise UserError("target_inverted_fraction applies to the severe target only; the mild and held-out targets "
                        "keep the source's polarity")
    inverted_fraction = 1.0 if target_inverted_fraction is None else target_inverted_fraction
    if not 0 <= inverted_fraction <= 1:
        raise UserError(f"target_inverted_fraction must be in [0, 1], got {inverted_fraction}")
    if source_size < 32 or target_size < 32:
        raise UserError(f"phantom sizes must be at least 32 px; got source {source_size}, target {target_size}")
    out = Path(out_dir)
    streams = np.random.SeedSequence(seed).spawn(3)
    jsrt_dir, scr_dir = _write_source(out, n_source, source_size, np.random.default_rng(streams[0]))
    written = {"jsrt": jsrt_dir, "scr": scr_dir}
    if n_target:
        target_rng = np.random.default_rng(streams[1])
        if mild is not None:
            written["montgomery"] = _write_mild_montgomery(out, n_target, target_size, target_rng, mild)
        elif held_out is not None:
            written["montgomery"] = _write_heldout_montgomery(out, n_target, target_size, target_rng, held_out)
        else:
            written["montgomery"] = _write_montgomery(out, n_target, target_size, target_rng, inverted_fraction)
    if n_shenzhen:
        written["shenzhen"] = _write_shenzhen(out, n_shenzhen, target_size, np.random.default_rng(streams[2]))
    return written
