"""Dataset names, folder-layout detection, tasks, and the orientation convention.

A *scan* finds a dataset's files and pairs every image with its masks without decoding pixels;
the cache decodes what a scan found. Each `--DATASET DIR` accepts the dataset's folder as
distributed or the folder just above it.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_io.readers import PICTURE_SUFFIXES, is_radiograph_file, radiograph_id, radiograph_kind
from errors import MissingInput, UserError

DATASETS = ("jsrt", "montgomery", "shenzhen")
# The target sets known by name (their layouts below); any other valid name is a folder target.
TARGET_DATASETS = ("montgomery", "shenzhen")
TARGET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")

# SCR structure names as in the original folders; "left"/"right" are the PATIENT's sides.
SCR_STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
# What each task segments, as a union of structures.
TASK_STRUCTURES: dict[str, tuple[str, ...]] = {
    "lungs": ("left lung", "right lung"),
    "heart": ("heart",),
    "clavicles": ("left clavicle", "right clavicle"),
}
MERGED_LUNGS = "lungs"  # structure name of a single merged lung mask (re-packaged Montgomery, Shenzhen)
LAYOUT_STRUCTURES = {
    "scr": SCR_STRUCTURES,
    "left-right": ("left lung", "right lung"),  # Montgomery ManualMask/leftMask + rightMask
    "merged": (MERGED_LUNGS,),
    "none": (),  # an unlabelled folder target
}

JSRT_MAX_VALUE = 4095  # 12 bits
# The target sets where images without a mask exist in the real release and are skipped.
SKIP_UNMASKED = {"montgomery": False, "shenzhen": True}

IMAGE_FOLDERS = ("CXR_png", "images")
MERGED_MASK_FOLDERS = ("ManualMask", "mask", "masks")
MASK_SUFFIXES = ("_mask", "")


@dataclass
class Case:
    id: str
    image: Path
    masks: dict[str, Path]  # structure -> file


@dataclass
class Scan:
    """What a dataset folder holds: paired cases, and cases skipped with a reason."""

    name: str
    image_root: Path
    mask_root: Path | None  # None: an unlabelled folder target
    image_format: str  # "jsrt-img" | "png" | for folder targets the formats found, e.g. "dicom+png"
    mask_layout: str  # "scr" | "left-right" | "merged" | "none"
    cases: list[Case]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def structures(self) -> tuple[str, ...]:
        return LAYOUT_STRUCTURES[self.mask_layout]

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.mask_layout == "none":
            return ()
        return tuple(TASK_STRUCTURES) if self.mask_layout == "scr" else ("lungs",)

    def files(self) -> list[Path]:
        """Every file the preprocessed arrays depend on, in a stable order."""
        paths = []
        for case in self.cases:
            paths.append(case.image)
            paths.extend(case.masks[s] for s in sorted(case.masks))
        return paths


def _normalise_structure(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_folder(folder: str | Path, flag: str) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise MissingInput(f"{folder}: {flag} folder does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder}: {flag} must be a folder, not a file")
    return folder


def _here_or_one_below(folder: Path, matches, what: str):
    """Apply `matches` to the folder, else to each subfolder: the 'as distributed or its parent' rule."""
    found = matches(folder)
    if found:
        return folder, found
    hits = [(sub, m) for sub in _subfolders(folder) if (m := matches(sub))]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        names = ", ".join(str(sub) for sub, _ in hits)
        raise UserError(f"{folder}: several subfolders look like {what} ({names}); pass one of them")
    raise UserError(f"{folder}: no {what} found here or in its subfolders")


# --- JSRT + SCR -------------------------------------------------------------------------------

_JSRT_PNG = re.compile(r"^(?P<id>.+?)(\.img)?\.png$", re.IGNORECASE)


def _files(folder: Path) -> list[Path]:
    """Plain files of a folder; scandir reads the file type without a stat per entry."""
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if entry.is_file() and not entry.name.startswith("."))


def _jsrt_images(folder: Path) -> dict[str, Path] | None:
    files = _files(folder)
    raw = {p.stem: p for p in files if p.suffix.lower() == ".img"}
    if raw:
        return raw
    pngs = {}
    for p in files:
        match = _JSRT_PNG.match(p.name)
        if match and p.name.upper().startswith("JPC"):
            pngs[match.group("id")] = p
    return pngs or None


def _scr_structure_folders(folder: Path) -> dict[str, list[Path]] | None:
    """Structure -> folders holding its masks, for the fold1/fold2, flat and bare layouts."""
    parents = [sub / "masks" for sub in _subfolders(folder) if re.fullmatch(r"fold\d+", sub.name.lower())]
    parents = [p for p in parents if p.is_dir()]
    if not parents and (folder / "masks").is_dir():
        parents = [folder / "masks"]
    if not parents:
        parents = [folder]
    structure_folders: dict[str, list[Path]] = {}
    for parent in parents:
        for sub in _subfolders(parent):
            structure = _normalise_structure(sub.name)
            if structure in SCR_STRUCTURES:
                structure_folders.setdefault(structure, []).append(sub)
    return structure_folders or None


def scan_jsrt(jsrt_dir: str | Path, scr_dir: str | Path) -> Scan:
    """Pair JSRT images (raw `.IMG` or re-packaged PNG) with their five SCR masks."""
    image_root, images = _here_or_one_below(
        _require_folder(jsrt_dir, "--jsrt"), _jsrt_images, "JSRT images (JPCLN001.IMG ... or JPCLN001.png ...)"
    )
    mask_root, structure_folders = _here_or_one_below(
        _require_folder(scr_dir, "--scr"), _scr_structure_folders,
        "SCR masks (fold1/masks/<structure>/, masks/<structure>/ or <structure>/ folders)",
    )
    missing = [s for s in SCR_STRUCTURES if s not in structure_folders]
    if missing:
        raise UserError(f"{mask_root}: no mask folder for {', '.join(repr(m) for m in missing)}")
    masks: dict[str, dict[str, Path]] = {}
    for structure, folders in structure_folders.items():
        by_id: dict[str, Path] = {}
        for folder in folders:
            for path in _files(folder):
                if path.suffix.lower() not in (".gif", ".png"):
                    continue
                case_id = re.sub(r"(\.img)$", "", path.stem, flags=re.IGNORECASE)
                if case_id in by_id:
                    raise UserError(f"{path}: duplicate '{structure}' mask for {case_id} (also {by_id[case_id]})")
                by_id[case_id] = path
        masks[structure] = by_id
    for structure, by_id in masks.items():
        for case_id, path in sorted(by_id.items()):
            if case_id not in images:
                raise UserError(f"{path}: mask without an image ({case_id} is not in {image_root})")
    cases = []
    for case_id in sorted(images):
        for structure in SCR_STRUCTURES:
            if case_id not in masks[structure]:
                raise UserError(
                    f"{images[case_id]}: image without its '{structure}' mask "
                    f"(no {case_id}.gif under {mask_root})"
                )
        cases.append(Case(case_id, images[case_id], {s: masks[s][case_id] for s in SCR_STRUCTURES}))
    image_format = "jsrt-img" if images[cases[0].id].suffix.lower() == ".img" else "png"
    return Scan("jsrt", image_root, mask_root, image_format, "scr", cases)


# --- Montgomery, Shenzhen ---------------------------------------------------------------------


def _target_image_folder(folder: Path) -> Path | None:
    for name in IMAGE_FOLDERS:
        candidate = folder / name
        if candidate.is_dir() and any(p.suffix.lower() == ".png" for p in candidate.iterdir()):
            return candidate
    return None


def _pngs(folder: Path) -> list[Path]:
    return [p for p in _files(folder) if p.suffix.lower() == ".png"]


def _mask_id(path: Path) -> str:
    stem = path.stem
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def is_folder_target(name: str) -> bool:
    """A target that is not one of the known sets: any folder of radiographs (`--target-dir`).
    The source, JSRT, is never one."""
    return name != "jsrt" and name not in TARGET_DATASETS


def check_target_name(name: str) -> str:
    """A target name goes into trial ids, cache and file names: short, lower case, no path characters."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise UserError(f"target name {name!r}: use lower-case letters, digits, '-' and '_' (e.g. 'hospital-a')")
    if name == "jsrt":
        raise UserError("target name 'jsrt': JSRT is the source; name the target set something else")
    return name


def target_dirs(values: list[str] | None, default_name: str | None = None) -> dict[str, str]:
    """`--target-dir` values, each `NAME=DIR` or a bare `DIR` for `default_name`, as {name: dir}."""
    out: dict[str, str] = {}
    for value in values or ():
        name, sep, folder = value.partition("=")
        if not (sep and TARGET_NAME.fullmatch(name)):
            if default_name is None:
                raise UserError(f"--target-dir {value}: say which target it holds, as NAME=DIR")
            name, folder = default_name, value
        check_target_name(name)
        if name in out and out[name] != folder:
            raise UserError(f"--target-dir: two folders for target {name!r} ({out[name]} and {folder})")
        out[name] = folder
    return out


def _lung_mask_files(data_root: Path) -> tuple[str, Path, dict[str, list[Path]]] | None:
    """(layout, mask root, structure -> files) of the lung masks under a target's folder, or None."""
    left, right = data_root / "ManualMask" / "leftMask", data_root / "ManualMask" / "rightMask"
    if left.is_dir() and right.is_dir():
        return "left-right", data_root / "ManualMask", {"left lung": _pngs(left), "right lung": _pngs(right)}
    merged = [data_root / f for f in MERGED_MASK_FOLDERS if (data_root / f).is_dir() and _pngs(data_root / f)]
    if not merged:
        return None
    return "merged", merged[0], {MERGED_LUNGS: _pngs(merged[0])}


def _pair_masks(images: dict[str, Path], image_folder: Path, mask_root: Path,
                structure_files: dict[str, list[Path]], skip_unmasked: bool) -> tuple[list[Case], list[dict]]:
    masks: dict[str, dict[str, Path]] = {}
    for structure, paths in structure_files.items():
        by_id = {}
        for path in paths:
            case_id = _mask_id(path)
            if case_id not in images:
                raise UserError(f"{path}: mask without an image ({case_id} is not in {image_folder})")
            by_id[case_id] = path
        masks[structure] = by_id
    cases, skipped = [], []
    for case_id in sorted(images):
        absent = [s for s in masks if case_id not in masks[s]]
        if not absent:
            cases.append(Case(case_id, images[case_id], {s: masks[s][case_id] for s in masks}))
            continue
        reason = f"no {' / '.join(absent)} mask in {mask_root}"
        if not skip_unmasked or len(absent) < len(masks):
            raise UserError(f"{images[case_id]}: image without its mask ({reason})")
        skipped.append({"id": case_id, "reason": reason})
    return cases, skipped


def scan_target(name: str, root: str | Path) -> Scan:
    """Pair a target set's images with their lung masks.

    Montgomery / Shenzhen: `CXR_png/` with left/right or merged lung masks, as distributed. Any
    other name is a folder target (`scan_folder_target`)."""
    if is_folder_target(name):
        return scan_folder_target(name, root)
    data_root, image_folder = _here_or_one_below(
        _require_folder(root, f"--{name}"), _target_image_folder, f"{name} images (a CXR_png/ folder of PNGs)"
    )
    images = {p.stem: p for p in _pngs(image_folder)}
    found = _lung_mask_files(data_root)
    if found is None:
        raise UserError(
            f"{data_root}: no lung masks (expected ManualMask/leftMask + ManualMask/rightMask, "
            f"or merged masks in one of {', '.join(MERGED_MASK_FOLDERS)}/)"
        )
    layout, mask_root, structure_files = found
    cases, skipped = _pair_masks(images, image_folder, mask_root, structure_files, SKIP_UNMASKED[name])
    if not cases:
        raise UserError(f"{data_root}: no {name} image has a lung mask")
    return Scan(name, image_folder, mask_root, "png", layout, cases, skipped)


def radiograph_files(folder: Path) -> list[Path]:
    """The radiographs among a folder's own files (any format `data_io.preprocess.decode_radiograph`
    decodes), sorted."""
    return [p for p in _files(folder) if is_radiograph_file(p)]


def _image_format(path: Path) -> str:
    """A radiograph file's format name for Scan.image_format: its decoder (`radiograph_kind`), or
    for a picture its normalised suffix."""
    kind = radiograph_kind(path)
    return kind if kind != "picture" else path.suffix.lower().lstrip(".").replace("jpeg", "jpg").replace("tiff", "tif")


def scan_folder_target(name: str, root: str | Path) -> Scan:
    """A target set that is just a folder of radiographs (`--target NAME --target-dir DIR`).

    Images: DIR's own radiograph files (DICOM with or without a suffix, PNG, JPEG, TIFF, ...), or
    those of DIR/CXR_png/ or DIR/images/. Lung masks, optional: PNGs matched by name
    (`<id>.png` or `<id>_mask.png`) in DIR/masks/, DIR/mask/ or DIR/ManualMask/ (or
    ManualMask/leftMask + rightMask); with masks, every image needs one. Without, the set is
    unlabelled: it serves transfer at 0 % labels and is never scored.
    """
    check_target_name(name)
    data_root = _require_folder(root, "--target-dir")
    # The first image sub-folder with radiographs, else DIR itself; each folder listed once, since
    # listing may open every suffix-less file to look for the DICOM marker.
    image_folder = data_root
    for sub in IMAGE_FOLDERS:
        if (data_root / sub).is_dir():
            files = radiograph_files(data_root / sub)
            if files:
                image_folder = data_root / sub
                break
    else:
        files = radiograph_files(data_root)
    images: dict[str, Path] = {}
    for path in files:
        case_id = radiograph_id(path)
        if case_id in images:
            raise UserError(f"{path}: two radiographs named {case_id} ({images[case_id].name} and {path.name}); "
                            "masks are matched by name, so names must be unique")
        images[case_id] = path
    if not images:
        raise UserError(f"{data_root}: no radiographs (DICOM, {', '.join(PICTURE_SUFFIXES)}) here or in "
                        f"{' or '.join(IMAGE_FOLDERS)}/")
    image_format = "+".join(sorted({_image_format(p) for p in images.values()}))
    found = _lung_mask_files(data_root)
    if found is None:
        cases = [Case(case_id, images[case_id], {}) for case_id in sorted(images)]
        return Scan(name, image_folder, None, image_format, "none", cases)
    layout, mask_root, structure_files = found
    cases, skipped = _pair_masks(images, image_folder, mask_root, structure_files, skip_unmasked=False)
    return Scan(name, image_folder, mask_root, image_format, layout, cases, skipped)


# --- sizes, orientation, tasks ----------------------------------------------------------------


def check_sizes(scan: Scan, case: Case, image_shape: tuple[int, int], mask_shapes: dict[str, tuple[int, int]]) -> None:
    """Enforce the dataset's image/mask size rule for one case; the error names the offending file."""
    image_h, image_w = image_shape
    if scan.name == "jsrt" and image_h != image_w:
        raise UserError(f"{case.image}: JSRT image is {image_h}x{image_w}, expected a square")
    first_shape = None
    for structure, (mask_h, mask_w) in mask_shapes.items():
        mask_path = case.masks[structure]
        if scan.name != "jsrt":
            if (mask_h, mask_w) != (image_h, image_w):
                raise UserError(f"{mask_path}: mask is {mask_h}x{mask_w} "
                                f"but its image {case.image.name} is {image_h}x{image_w}")
            continue
        if mask_h != mask_w:
            raise UserError(f"{mask_path}: SCR mask is {mask_h}x{mask_w}, expected a square")
        if first_shape is not None and (mask_h, mask_w) != first_shape:
            raise UserError(f"{mask_path}: mask is {mask_h}x{mask_w} "
                            f"but the other masks of {case.id} are {first_shape[0]}x{first_shape[1]}")
        first_shape = (mask_h, mask_w)
        # Original data: 2048 image, 1024 masks. Re-packaged PNGs were rescaled; any square pair goes.
        if scan.image_format == "jsrt-img" and image_h != 2 * mask_h:
            raise UserError(
                f"{mask_path}: mask is {mask_h}x{mask_w} but its image {case.image.name} is "
                f"{image_h}x{image_w}; SCR masks are half the .IMG side"
            )


def display_polarity(image: np.ndarray, white_is_zero: bool, inversion_sum: float | None = None) -> np.ndarray:
    """Gray levels as float32 with bone bright: a 'white is zero' image is inverted.

    JSRT `.IMG` stores optical density; DICOM MONOCHROME1 displays its highest value black.
    The inversion is `inversion_sum - value` (DICOM: the sum of the output range's ends, which
    maps that range onto itself); without one, JSRT's rule, 12 bits unless the file holds more.
    Any constant would do (standardisation follows): an exact one keeps integer values exact.
    """
    pixels = image.astype(np.float32)
    if white_is_zero:
        total = inversion_sum if inversion_sum is not None else max(JSRT_MAX_VALUE, float(pixels.max()))
        pixels = np.float32(total) - pixels
    return pixels


def to_display_convention(
    image: np.ndarray, masks: dict[str, np.ndarray], white_is_zero: bool, inversion_sum: float | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
    """Orient a case as displayed: bone bright, patient's left on the image's right.

    Polarity: see `display_polarity`. When the masks name the patient's sides, a case whose left
    lung lies on the image's left half is a mirrored copy and is flipped back (image and all
    masks). Returns (image float32, masks, mirrored).
    """
    pixels = display_polarity(image, white_is_zero, inversion_sum)
    mirrored = False
    if "left lung" in masks and "right lung" in masks:
        left_x, right_x = _centroid_x(masks["left lung"]), _centroid_x(masks["right lung"])
        mirrored = left_x is not None and right_x is not None and left_x < right_x
    if mirrored:
        pixels = pixels[:, ::-1]
        masks = {name: mask[:, ::-1] for name, mask in masks.items()}
    return np.ascontiguousarray(pixels), masks, mirrored


def _centroid_x(mask: np.ndarray) -> float | None:
    """Horizontal centroid as a fraction of the width (0 = left edge)."""
    columns = mask.sum(axis=0)
    total = columns.sum()
    if total == 0:
        return None
    return float((columns * np.arange(mask.shape[1])).sum() / total / mask.shape[1])


def task_masks(structure_masks: dict[str, np.ndarray], tasks: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Merge patient-side structures into the tasks: lungs = left | right lung, etc."""
    out = {}
    for task in tasks:
        if task == "lungs" and MERGED_LUNGS in structure_masks:
            out[task] = structure_masks[MERGED_LUNGS]
            continue
        parts = [structure_masks[s] for s in TASK_STRUCTURES[task]]
        merged = parts[0].copy()
        for part in parts[1:]:
            merged |= part
        out[task] = merged
    return out


def summarise(scan: Scan, image_shapes: list[tuple[int, int]]) -> dict:
    """The `data check` summary of one dataset."""
    counts = Counter(f"{h}x{w}" for h, w in image_shapes)
    return {
        "root": str(scan.image_root),
        "mask_root": None if scan.mask_root is None else str(scan.mask_root),
        "image_format": scan.image_format,
        "mask_layout": scan.mask_layout,
        "cases": len(scan.cases),
        "masks": {s: sum(1 for c in scan.cases if s in c.masks) for s in scan.structures},
        "tasks": list(scan.tasks),
        "image_sizes": dict(sorted(counts.items())),
        "skipped": list(scan.skipped),
    }
