"""Decode, orient, resize and normalise each dataset once per image size; every trial reuses it.

Normalisation is per-image standardisation: after resizing, each image has mean 0 and std 1.
That removes the datasets' different bit depths, windowing and exposure, which on the real
data is most of the JSRT -> Montgomery gap (method-notes.md).

The cache is one `.npz` per (dataset, folder, image size) under `$CXRSWEEP_CACHE` or
`~/.cache/cxrsweep`. Its key hashes every source file's path, size and modification time with
the preprocessing version, so editing, adding or removing a file rebuilds it; stale entries of
the same folder are deleted when the new one is written.
"""
from __future__ import annotations

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
from PIL import Image

from data_io import datasets
from data_io.datasets import Case, Scan
from data_io.readers import Radiograph, read_mask, read_radiograph

log = logging.getLogger(__name__)

# Bump when decoding, orientation, resizing or normalisation changes: old caches then miss.
# 2: polarity is set at full resolution, before resizing (`prepare_image`, shared with `cxrsweep segment`).
PREPROCESS_VERSION = 2
NORMALISATION = "per_image_standardisation"
# Below this many cases a process pool costs more than it saves.
POOL_MIN_CASES = 32
# float16 halves the cache; standardised values keep about three significant digits.
CACHE_IMAGE_DTYPE = np.float16


@dataclass
class CachedDataset:
    name: str  # "jsrt" | "montgomery" | "shenzhen" | a folder target's name
    ids: list[str]  # sorted case ids
    images: np.ndarray  # float32 [N, S, S], per-image standardised
    masks: dict[str, np.ndarray]  # task -> uint8 [N, S, S] in {0, 1}; empty for an unlabelled target
    image_size: int
    key: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{id, reason}] left out by the scan
    path: Path | None = None  # the cache file, e.g. to ship to Ray workers
    normalisation: str = NORMALISATION

    def __len__(self) -> int:
        return len(self.ids)


def default_cache_dir() -> Path:
    env = os.environ.get("CXRSWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cxrsweep"


def load_jsrt(jsrt_dir: str | Path, scr_dir: str | Path, image_size: int, cache_dir: str | Path | None = None) -> CachedDataset:
    """JSRT images with SCR masks for the tasks lungs, heart and clavicles."""
    return _load(datasets.scan_jsrt(jsrt_dir, scr_dir), image_size, cache_dir)


def load_target(name: str, root: str | Path, image_size: int, cache_dir: str | Path | None = None) -> CachedDataset:
    """Montgomery or Shenzhen with lung masks (Shenzhen images without a mask are skipped and
    listed), or any other name: a folder of radiographs with optional lung masks
    (`datasets.scan_folder_target`)."""
    return _load(datasets.scan_target(name, root), image_size, cache_dir)


def load_cache_file(path: str | Path) -> CachedDataset:
    """Read a cache file written by `load_jsrt` / `load_target` (e.g. on a Ray worker)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            images = archive["images"].astype(np.float32)
            count, size = meta["count"], meta["image_size"]
            masks = {
                task: np.unpackbits(archive[f"mask_{task}"], count=count * size * size).reshape(count, size, size)
                for task in meta["tasks"]
            }
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: cache file not found") from None
    except (KeyError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable cxrsweep cache file ({exc})") from None
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
    )


def cache_key(scan: Scan, image_size: int) -> str:
    """Hash of the preprocessing recipe and every source file's identity (path, size, mtime)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([scan.name, PREPROCESS_VERSION, NORMALISATION, image_size, scan.skipped]).encode())
    for path in scan.files():
        # abspath, not resolve(): no per-file symlink walk, which would dominate a cache hit.
        name = os.path.abspath(path)
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: disappeared while reading the dataset") from None
        digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _cache_prefix(scan: Scan, image_size: int) -> str:
    """Entries of the same folders and size share this prefix; only the newest key is kept."""
    roots = f"{scan.image_root.resolve()}\0{scan.mask_root.resolve() if scan.mask_root else ''}"
    return f"{scan.name}-{image_size}px-{hashlib.sha256(roots.encode()).hexdigest()[:10]}"


def _load(scan: Scan, image_size: int, cache_dir: str | Path | None) -> CachedDataset:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8, got {image_size!r}")
    image_size = int(image_size)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(scan, image_size)
    prefix = _cache_prefix(scan, image_size)
    path = folder / f"{prefix}-{key[:16]}.npz"
    if path.exists():
        try:
            cached = load_cache_file(path)
            if cached.key == key:
                return cached
        except ValueError as exc:
            log.warning("rebuilding unreadable cache entry: %s", exc)
    started = time.perf_counter()
    log.info("preprocessing %s: %d cases from %s at %d px", scan.name, len(scan.cases), scan.image_root, image_size)
    images, masks = preprocess(scan, image_size)
    # Return exactly what a cache hit returns, so the run that builds the cache is reproducible.
    images = images.astype(CACHE_IMAGE_DTYPE).astype(np.float32)
    dataset = CachedDataset(
        name=scan.name,
        ids=[case.id for case in scan.cases],
        images=images,
        masks=masks,
        image_size=image_size,
        key=key,
        skipped=list(scan.skipped),
        path=path,
    )
    _write(dataset, folder, prefix)
    log.info("cached %s (%d cases) in %.1f s: %s", scan.name, len(dataset), time.perf_counter() - started, path)
    return dataset


def _write(dataset: CachedDataset, folder: Path, prefix: str) -> None:
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
    }
    arrays = {f"mask_{task}": np.packbits(mask.reshape(-1)) for task, mask in dataset.masks.items()}
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


def preprocess(scan: Scan, image_size: int, workers: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Decode every case of a scan into standardised images and task masks at `image_size`."""
    workers = workers or _worker_count(len(scan.cases))
    jobs = [(scan, case, image_size) for case in scan.cases]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_prepare_case_job, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_prepare_case_job(job) for job in jobs]
    mirrored = [case.id for case, (_, _, flipped) in zip(scan.cases, results) if flipped]
    if mirrored:
        log.warning("%s: %d mirrored case(s) flipped to the display convention: %s", scan.name, len(mirrored), ", ".join(mirrored[:10]))
    images = np.stack([image for image, _, _ in results])
    masks = {task: np.stack([case_masks[task] for _, case_masks, _ in results]) for task in scan.tasks}
    return images, masks


def _prepare_case_job(job: tuple[Scan, Case, int]):
    return prepare_case(*job)


def prepare_case(scan: Scan, case: Case, image_size: int) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
    """One case: (standardised float32 image [S, S], task -> uint8 mask [S, S], was it mirrored).

    The image goes through `prepare_image`, exactly as `cxrsweep segment` prepares a new
    radiograph. Masks are resized before merging; a mirrored case (decided on the small masks)
    is flipped back afterwards, image and masks together.
    """
    radiograph = read_radiograph(case.image)
    structures = {name: read_mask(path) for name, path in case.masks.items()}
    datasets.check_sizes(scan, case, radiograph.pixels.shape, {name: mask.shape for name, mask in structures.items()})
    image = prepare_image(radiograph, image_size, case.image)
    small_structures = {name: resize_mask(mask, image_size) for name, mask in structures.items()}
    image, small_structures, mirrored = datasets.to_display_convention(image, small_structures, white_is_zero=False)
    masks = {task: mask.astype(np.uint8) for task, mask in datasets.task_masks(small_structures, scan.tasks).items()}
    return image, masks, mirrored


def prepare_image(radiograph: Radiograph, image_size: int, source: str | Path) -> np.ndarray:
    """The preprocessing of one radiograph, shared by the cache (training) and `cxrsweep segment`:
    polarity (bone bright) at full resolution, resize to [S, S], per-image standardisation."""
    pixels = datasets.display_polarity(radiograph.pixels, radiograph.white_is_zero, radiograph.inversion_sum)
    return standardise(resize(pixels, image_size), Path(source))


def preprocess_file(path: str | Path, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read and prepare one radiograph file: (standardised float32 [S, S], its (height, width))."""
    radiograph = read_radiograph(path)
    return prepare_image(radiograph, image_size, path), tuple(radiograph.pixels.shape)


def _resample_filter(source_shape: tuple[int, int], size: int) -> int:
    # Area averaging when shrinking (no aliasing of ribs and noise); bilinear when enlarging.
    return Image.BOX if min(source_shape) >= size else Image.BILINEAR


def resize(array: np.ndarray, size: int) -> np.ndarray:
    """Resize gray levels to float32 [size, size] (aspect ratio not kept, as in the paper)."""
    resample = _resample_filter(array.shape, size)
    resized = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).resize((size, size), resample)
    return np.asarray(resized, dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a binary mask to bool [size, size]: a pixel is foreground when at least half of it was."""
    resample = _resample_filter(mask.shape, size)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), resample)
    return np.asarray(resized) >= 128


def standardise(image: np.ndarray, source: Path) -> np.ndarray:
    """Per-image standardisation: mean 0, std 1."""
    std = float(image.std())
    if not np.isfinite(std) or std < 1e-6:
        raise ValueError(f"{source}: image has a single gray level; nothing to segment")
    return ((image - image.mean()) / std).astype(np.float32)
