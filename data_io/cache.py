"""Decode, orient, crop, resize and normalise each dataset once per image size; every trial reuses it.

Each radiograph goes through `data_io.preprocess.prepare_radiograph` (the per-image pipeline,
shared with `cxrsweep segment`): orientation, the content crop (padding and collimation bands
trimmed, on by default, `crop_borders`), resizing and per-image standardisation (mean 0, std 1).
Standardisation removes the datasets' different bit depths, windowing and exposure, which on the
real data is most of the JSRT -> Montgomery gap.

The cache is one `.npz` per (dataset, folder, image size, crop setting) under `$CXRSWEEP_CACHE`
or `~/.cache/cxrsweep`. Its key hashes every source file's path, size and modification time with
the preprocessing version and the crop setting, so editing, adding or removing a file rebuilds
it; stale entries of the same folder are deleted when the new one is written.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_io import datasets
from data_io.datasets import Case, Scan
from data_io.preprocess import (
    CROP_FIELDS,
    NORMALISATION,
    PREPROCESS_VERSION,
    UNREADABLE_ERRORS,
    CropBox,
    any_trimmed,
    crop_statistics,
    decode_radiograph,
    describe_crop_statistics,
    prepare_radiograph,
    unreadable_reason,
)
from data_io.readers import read_mask
from errors import MissingInput, UserError

__all__ = ["CachedDataset", "cache_key", "default_cache_dir", "fingerprint_arrays", "load_cache_file", "load_jsrt",
           "load_target", "prepare_case", "preprocess"]

log = logging.getLogger(__name__)
# Below this many cases a process pool costs more than it saves.
POOL_MIN_CASES = 32
# float16 halves the cache; standardised values keep about three significant digits.
CACHE_IMAGE_DTYPE = np.float16


@dataclass
class CachedDataset:
    name: str  # "jsrt" | "montgomery" | "shenzhen" | a folder target's name
    ids: list[str]  # sorted case ids
    images: np.ndarray  # float32 [N, S, S], the content crop of each image, per-image standardised
    # task -> uint8 [N, S, S] in {0, 1}, in the cropped frame (training); empty for an unlabelled target
    masks: dict[str, np.ndarray]
    image_size: int
    key: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{id, reason}] left out by the scan
    path: Path | None = None  # the cache file, e.g. to ship to Ray workers
    normalisation: str = NORMALISATION
    # Whether the content crop ran (padding and collimation bands trimmed); the default suits
    # arrays made by hand, where there is nothing to trim (crop_boxes None).
    crop_borders: bool = True
    # task -> uint8 [N, S, S]: the masks of the whole frame (scores are computed there); None = `masks`
    full_masks: dict[str, np.ndarray] | None = None
    crop_boxes: np.ndarray | None = None  # int32 [N, 6] CropBox rows (CROP_FIELDS); None = nothing trimmed

    def __post_init__(self) -> None:
        if self.full_masks is None:
            self.full_masks = self.masks
        if self.crop_boxes is None:
            # Nothing trimmed: each box is the whole frame (its original size is then unknown, and unneeded).
            size = self.image_size
            self.crop_boxes = np.tile(np.array([0, 0, size, size, size, size], np.int32), (len(self.ids), 1))

    def __len__(self) -> int:
        return len(self.ids)

    def crop(self, index: int) -> CropBox:
        return CropBox.from_row(self.crop_boxes[index])

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a trial trained on, by content: the ids, the arrays and their size, and where
        something was trimmed, the crop boxes and whole-frame masks it is scored on. Unlike `key`
        (file paths, sizes and times) it recognises the same data at another path or synthesised
        again, and it tells apart any two sets whose arrays differ."""
        return fingerprint_arrays(self.name, self.ids, self.images, self.masks, self.crop_boxes, self.full_masks)


def default_cache_dir() -> Path:
    env = os.environ.get("CXRSWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cxrsweep"


def load_jsrt(jsrt_dir: str | Path, scr_dir: str | Path, image_size: int, cache_dir: str | Path | None = None,
              crop_borders: bool = True) -> CachedDataset:
    """JSRT images with SCR masks for the tasks lungs, heart and clavicles."""
    return _load(datasets.scan_jsrt(jsrt_dir, scr_dir), image_size, cache_dir, crop_borders)


def load_target(name: str, root: str | Path, image_size: int, cache_dir: str | Path | None = None,
                crop_borders: bool = True) -> CachedDataset:
    """Montgomery or Shenzhen with lung masks (Shenzhen images without a mask are skipped and
    listed), or any other name: a folder of radiographs with optional lung masks
    (`datasets.scan_folder_target`)."""
    return _load(datasets.scan_target(name, root), image_size, cache_dir, crop_borders)


def load_cache_file(path: str | Path) -> CachedDataset:
    """Read a cache file written by `load_jsrt` / `load_target` (e.g. on a Ray worker)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            images = archive["images"].astype(np.float32)
            count, size = meta["count"], meta["image_size"]

            def unpack(name: str) -> np.ndarray:
                return np.unpackbits(archive[name], count=count * size * size).reshape(count, size, size)

            masks = {task: unpack(f"mask_{task}") for task in meta["tasks"]}
            # Files written before the content crop hold neither: nothing was trimmed then.
            full_masks = {task: unpack(f"full_mask_{task}") for task in meta.get("full_mask_tasks", [])} or None
            crop_boxes = archive["crop_boxes"].astype(np.int32) if "crop_boxes" in archive.files else None
    except FileNotFoundError:
        raise MissingInput(f"{path}: cache file not found") from None
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable cxrsweep cache file ({exc})") from None
    return CachedDataset(
        name=meta["name"],
        ids=list(meta["ids"]),
        images=images,
        masks=masks,
        image_size=size,
        key=meta["key"],
        skipped=list(meta["skipped"]),
        path=path,
        normalisation=meta["normalisation"],
        crop_borders=bool(meta.get("crop_borders", False)),
        full_masks=full_masks,
        crop_boxes=crop_boxes,
    )


def fingerprint_arrays(name: str, ids: list[str], images: np.ndarray, masks: dict[str, np.ndarray],
                       crop_boxes: np.ndarray | None = None, full_masks: dict[str, np.ndarray] | None = None) -> str:
    """A content hash of a dataset's preprocessed arrays (about 1 s per GB). Crop boxes and
    whole-frame masks count only where an image was trimmed, so a set without borders hashes the
    same whether the content crop ran or not (its arrays are the same)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([name, list(ids), list(images.shape), str(images.dtype), sorted(masks)]).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    for task in sorted(masks):
        digest.update(np.packbits(np.ascontiguousarray(masks[task], dtype=np.uint8).reshape(-1)).tobytes())
    if crop_boxes is not None and any_trimmed(crop_boxes):
        digest.update(np.ascontiguousarray(crop_boxes, dtype=np.int64).tobytes())
        for task in sorted(full_masks or {}):
            digest.update(np.packbits(np.ascontiguousarray(full_masks[task], dtype=np.uint8).reshape(-1)).tobytes())
    return digest.hexdigest()[:16]


def cache_key(scan: Scan, image_size: int, crop_borders: bool = True) -> str:
    """Hash of the preprocessing recipe (version, normalisation, size, content crop on or off)
    and every source file's identity (path, size, mtime)."""
    digest = hashlib.sha256()
    recipe = [scan.name, PREPROCESS_VERSION, NORMALISATION, image_size, scan.skipped,
              {"crop_borders": bool(crop_borders)}]
    digest.update(json.dumps(recipe).encode())
    for path in scan.files():
        # abspath, not resolve(): no per-file symlink walk, which would dominate a cache hit.
        name = os.path.abspath(path)
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            raise MissingInput(f"{path}: disappeared while reading the dataset") from None
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _cache_prefix(scan: Scan, image_size: int, crop_borders: bool) -> str:
    """Entries of the same folders, size and crop setting share this prefix; only the newest key is kept."""
    roots = f"{scan.image_root.resolve()}\0{scan.mask_root.resolve() if scan.mask_root else ''}"
    crop = "" if crop_borders else "-uncropped"
    return f"{scan.name}-{image_size}px{crop}-{hashlib.sha256(roots.encode()).hexdigest()[:10]}"


def _load(scan: Scan, image_size: int, cache_dir: str | Path | None, crop_borders: bool) -> CachedDataset:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8, got {image_size!r}")
    image_size, crop_borders = int(image_size), bool(crop_borders)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(scan, image_size, crop_borders)
    prefix = _cache_prefix(scan, image_size, crop_borders)
    path = folder / f"{prefix}-{key[:16]}.npz"
    if path.exists():
        try:
            cached = load_cache_file(path)
            if cached.key == key and not _now_readable(scan, cached, image_size, crop_borders):
                _warn_unreadable(scan, _unreadable_entries(cached.skipped))
                return cached
        except ValueError as exc:
            log.warning("rebuilding unreadable cache entry: %s", exc)
    started = time.perf_counter()
    log.info("preprocessing %s: %d cases from %s at %d px, content crop %s", scan.name, len(scan.cases),
             scan.image_root, image_size, "on" if crop_borders else "off")
    prepared = preprocess(scan, image_size, crop_borders=crop_borders)
    _warn_unreadable(scan, prepared.unreadable)
    statistics = crop_statistics(prepared.crop_boxes)
    if crop_borders:
        log.info(describe_crop_statistics(scan.name, statistics))
    # Return exactly what a cache hit returns, so the run that builds the cache is reproducible.
    images = prepared.images.astype(CACHE_IMAGE_DTYPE).astype(np.float32)
    dataset = CachedDataset(
        name=scan.name,
        ids=prepared.ids,
        images=images,
        masks=prepared.masks,
        image_size=image_size,
        key=key,
        skipped=list(scan.skipped) + prepared.unreadable,
        path=path,
        crop_borders=crop_borders,
        full_masks=prepared.full_masks,
        crop_boxes=prepared.crop_boxes,
    )
    _write(dataset, folder, prefix, statistics)
    log.info("cached %s (%d cases) in %.1f s: %s", scan.name, len(dataset), time.perf_counter() - started, path)
    return dataset


UNREADABLE = "unreadable: "  # how a `skipped` entry of an image left out as unreadable begins


def _unreadable_entries(skipped: list[dict[str, str]]) -> list[dict[str, str]]:
    return [entry for entry in skipped if entry["reason"].startswith(UNREADABLE)]


def _warn_unreadable(scan: Scan, unreadable: list[dict[str, str]]) -> None:
    """Say, on every load, which images of a folder target were left out and why."""
    if not unreadable:
        return
    listed = "; ".join(f"{entry['id']} ({entry['reason'][len(UNREADABLE):]})" for entry in unreadable[:5])
    more = len(unreadable) - 5
    log.warning("%s: %d of %d image(s) unreadable, left out: %s%s", scan.name, len(unreadable), len(scan.cases),
                listed, f"; and {more} more (the cache entry's skipped list has them all)" if more > 0 else "")


def _now_readable(scan: Scan, cached: CachedDataset, image_size: int, crop_borders: bool) -> bool:
    """Whether an image the cache entry left out as unreadable reads now. The entry's key knows the
    files, not the machine: a decoder installed since, a permission fixed or memory freed changes
    no file, so the left-out images (few) are tried again on every load."""
    by_id = {case.id: case for case in scan.cases}
    for entry in _unreadable_entries(cached.skipped):
        case = by_id.get(entry["id"])
        if case is not None and not isinstance(prepare_case(scan, case, image_size, crop_borders, True), str):
            log.info("%s: %s reads now: preparing the dataset again", scan.name, case.image)
            return True
    return False


def _write(dataset: CachedDataset, folder: Path, prefix: str, statistics: dict) -> None:
    """Write the cache entry; `statistics` is crop_statistics(dataset.crop_boxes), computed once by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": dataset.name,
        "ids": dataset.ids,
        "key": dataset.key,
        "image_size": dataset.image_size,
        "count": len(dataset),
        "tasks": list(dataset.masks),
        "skipped": dataset.skipped,
        "normalisation": dataset.normalisation,
        "version": PREPROCESS_VERSION,
        "crop_borders": dataset.crop_borders,
        "crop_fields": list(CROP_FIELDS),
        "crop_statistics": statistics,
    }
    arrays = {f"mask_{task}": np.packbits(mask.reshape(-1)) for task, mask in dataset.masks.items()}
    # Whole-frame masks only where they differ from the cropped ones: when something was trimmed.
    full = dataset.full_masks if statistics["trimmed"] else {}
    meta["full_mask_tasks"] = list(full)
    arrays.update({f"full_mask_{task}": np.packbits(mask.reshape(-1)) for task, mask in full.items()})
    arrays["crop_boxes"] = dataset.crop_boxes.astype(np.int32)
    arrays["images"] = dataset.images.astype(CACHE_IMAGE_DTYPE)
    arrays["meta"] = np.array(json.dumps(meta))
    # Write then rename, so concurrent trials never read a half-written cache.
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".writing-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, dataset.path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for stale in folder.glob(f"{prefix}-*.npz"):
        if stale != dataset.path:
            stale.unlink(missing_ok=True)


def _worker_count(n_cases: int) -> int:
    configured = os.environ.get("CXRSWEEP_DATA_WORKERS")
    if configured:
        return max(1, int(configured))
    return min(2, os.cpu_count() or 1) if n_cases >= POOL_MIN_CASES else 1


@dataclass
class PreparedDataset:
    """A scan's arrays: `masks` in each image's cropped frame, `full_masks` in its whole frame."""

    ids: list[str]  # the cases read, in the scan's order
    images: np.ndarray
    masks: dict[str, np.ndarray]
    full_masks: dict[str, np.ndarray]
    crop_boxes: np.ndarray
    unreadable: list[dict[str, str]] = field(default_factory=list)  # [{id, reason}] left out


def preprocess(scan: Scan, image_size: int, workers: int | None = None, crop_borders: bool = True) -> PreparedDataset:
    """Decode every case of a scan into standardised images and task masks at `image_size`.

    A folder target (an archive, `datasets.is_folder_target`) leaves out the images that cannot be
    decoded and lists them (`unreadable`); in the known sets, which the tables are computed on, a
    damaged file stops the job with its name and the problem."""
    workers = workers or _worker_count(len(scan.cases))
    skip_unreadable = datasets.is_folder_target(scan.name)
    jobs = [(scan, case, image_size, crop_borders, skip_unreadable) for case in scan.cases]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(_prepare_case_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        outcomes = [_prepare_case_job(job) for job in jobs]
    unreadable = [{"id": case.id, "reason": f"{UNREADABLE}{outcome}"}
                  for case, outcome in zip(scan.cases, outcomes) if isinstance(outcome, str)]
    if unreadable and len(unreadable) == len(scan.cases):
        raise UserError(f"{scan.image_root}: none of its {len(scan.cases)} image(s) could be read "
                        f"({scan.cases[0].image.name}: {outcomes[0]})")
    read = [(case, outcome) for case, outcome in zip(scan.cases, outcomes) if not isinstance(outcome, str)]
    cases, results = [case for case, _ in read], [result for _, result in read]
    mirrored = [case.id for case, result in read if result.mirrored]
    if mirrored:
        log.warning("%s: %d mirrored case(s) flipped to the display convention: %s",
                    scan.name, len(mirrored), ", ".join(mirrored[:10]))
    masks = {task: np.stack([result.masks[task] for result in results]) for task in scan.tasks}
    trimmed = any(result.crop.trimmed for result in results)
    full_masks = ({task: np.stack([result.full_masks[task] for result in results]) for task in scan.tasks}
                  if trimmed else masks)
    return PreparedDataset(
        ids=[case.id for case in cases],
        images=np.stack([result.image for result in results]),
        masks=masks,
        full_masks=full_masks,
        crop_boxes=np.array([result.crop.as_row() for result in results], dtype=np.int32).reshape(-1, len(CROP_FIELDS)),
        unreadable=unreadable,
    )


def _prepare_case_job(job: tuple[Scan, Case, int, bool, bool]):
    return prepare_case(*job)


def prepare_case(scan: Scan, case: Case, image_size: int, crop_borders: bool = True, skip_unreadable: bool = False):
    """One case through `prepare_radiograph`: a PreparedRadiograph whose masks are the scan's
    tasks (uint8) instead of SCR structures. With `skip_unreadable`, an image that cannot be
    decoded or prepared (damaged, uniform, ...: what `cxrsweep segment` lists as unreadable) gives
    the reason (a str) instead; a bad mask still raises."""

    def image_step(step, *args, **kwargs):
        try:
            return step(*args, **kwargs)
        except UNREADABLE_ERRORS as exc:
            if not skip_unreadable:
                raise
            return unreadable_reason(case.image, exc)

    radiograph = image_step(decode_radiograph, case.image, scan.image_format)
    if isinstance(radiograph, str):
        return radiograph
    structures = {name: read_mask(path) for name, path in case.masks.items()}
    datasets.check_sizes(scan, case, radiograph.pixels.shape, {name: mask.shape for name, mask in structures.items()})
    prepared = image_step(prepare_radiograph, radiograph, image_size, source=case.image, crop_borders=crop_borders,
                          structures=structures)
    if isinstance(prepared, str):
        return prepared

    def tasks(structure_masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {task: mask.astype(np.uint8) for task, mask in datasets.task_masks(structure_masks, scan.tasks).items()}

    prepared.masks = tasks(prepared.masks)
    prepared.full_masks = tasks(prepared.full_masks) if prepared.crop.trimmed else prepared.masks
    return prepared
