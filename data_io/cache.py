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
from PIL import Image

from data_io import datasets
from data_io.datasets import Case, Scan
from data_io.readers import read_gray, read_jsrt_img, read_mask

log = logging.getLogger(__name__)

# Bump when decoding, orientation, resizing or normalisation changes: old caches then miss.
PREPROCESS_VERSION = 1
NORMALISATION = "per_image_standardisation"
# Below this many cases a process pool costs more than it saves.
POOL_MIN_CASES = 32
# float16 halves the cache; standardised values keep about three significant digits.
CACHE_IMAGE_DTYPE = np.float16


@dataclass
class CachedDataset:
    name: str  # "jsrt" | "montgomery" | "shenzhen"
    ids: list[str]  # sorted case ids
    images: np.ndarray  # float32 [N, S, S], per-image standardised
    masks: dict[str, np.ndarray]  # task -> uint8 [N, S, S] in {0, 1}
    image_size: int
    key: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{id, reason}] left out by the scan
    path: Path | None = None  # the cache file, e.g. to ship to Ray workers
    normalisation: str = NORMALISATION

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a trial trained on, by content: the ids, the arrays and their size. Unlike `key`
        (file paths, sizes and times) it recognises the same data at another path or synthesised
        again, and it tells apart any two sets whose arrays differ. Trial identity, checkpoints
        and tuning records carry it (docs/ARCHITECTURE.md, "data identity")."""
        return fingerprint_arrays(self.name, self.ids, self.images, self.masks)


def default_cache_dir() -> Path:
    env = os.environ.get("CXRSWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cxrsweep"


def load_jsrt(jsrt_dir: str | Path, scr_dir: str | Path, image_size: int, cache_dir: str | Path | None = None) -> CachedDataset:
    """JSRT images with SCR masks for the tasks lungs, heart and clavicles."""
    return _load(datasets.scan_jsrt(jsrt_dir, scr_dir), image_size, cache_dir)


def load_target(name: str, root: str | Path, image_size: int, cache_dir: str | Path | None = None) -> CachedDataset:
    """Montgomery or Shenzhen with lung masks; Shenzhen images without a mask are skipped and listed."""
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


def fingerprint_arrays(name: str, ids: list[str], images: np.ndarray, masks: dict[str, np.ndarray]) -> str:
    """A content hash of a dataset's preprocessed arrays (about 1 s per GB)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([name, list(ids), list(images.shape), str(images.dtype), sorted(masks)]).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    for task in sorted(masks):
        digest.update(np.packbits(np.ascontiguousarray(masks[task], dtype=np.uint8).reshape(-1)).tobytes())
    return digest.hexdigest()[:16]


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
    roots = f"{scan.image_root.resolve()}\0{scan.mask_root.resolve()}"
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

    Everything is resized before orientation and merging: inversion and mirroring commute with
    area averaging, and working at S x S instead of 2048 x 2048 is most of the speed.
    """
    raw = read_jsrt_img(case.image) if scan.image_format == "jsrt-img" else read_gray(case.image)
    if raw.ndim != 2:
        raise ValueError(f"{case.image}: expected a single-channel image, got shape {raw.shape}")
    structures = {name: read_mask(path) for name, path in case.masks.items()}
    datasets.check_sizes(scan, case, raw.shape, {name: mask.shape for name, mask in structures.items()})
    small_image = resize(raw, image_size)
    small_structures = {name: resize_mask(mask, image_size) for name, mask in structures.items()}
    pixels, small_structures, mirrored = datasets.to_display_convention(
        small_image, small_structures, white_is_zero=scan.image_format == "jsrt-img"
    )
    image = standardise(pixels, case.image)
    masks = {task: mask.astype(np.uint8) for task, mask in datasets.task_masks(small_structures, scan.tasks).items()}
    return image, masks, mirrored


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
