"""The preprocessing cache: array contract, reuse, and invalidation when source files change."""
from __future__ import annotations

import os

import numpy as np
import pytest

from data_io.cache import CachedDataset, load_cache_file, load_jsrt, load_target


def _cache_files(folder):
    return sorted(folder.glob("*.npz"))


def test_jsrt_arrays_follow_the_contract(phantom_dirs, tmp_path):
    dataset = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 32, cache_dir=tmp_path)
    assert isinstance(dataset, CachedDataset) and dataset.name == "jsrt" and dataset.image_size == 32
    assert dataset.ids == sorted(dataset.ids) and len(dataset.ids) == 8
    assert dataset.images.dtype == np.float32 and dataset.images.shape == (8, 32, 32)
    np.testing.assert_allclose(dataset.images.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(dataset.images.std(axis=(1, 2)), 1, atol=1e-3)
    assert set(dataset.masks) == {"lungs", "heart", "clavicles"}
    for mask in dataset.masks.values():
        assert mask.dtype == np.uint8 and mask.shape == (8, 32, 32) and set(np.unique(mask)) <= {0, 1}
    # Each structure is present in every phantom, and lungs are the largest.
    assert all(mask.reshape(8, -1).any(axis=1).all() for mask in dataset.masks.values())
    assert dataset.masks["lungs"].mean() > dataset.masks["heart"].mean() > dataset.masks["clavicles"].mean()


def test_cache_hit_returns_the_same_arrays_from_one_file(phantom_dirs, tmp_path):
    first = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 32, cache_dir=tmp_path)
    files = _cache_files(tmp_path)
    assert files == [first.path]
    modified = first.path.stat().st_mtime_ns
    second = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 32, cache_dir=tmp_path)
    assert second.key == first.key and second.path.stat().st_mtime_ns == modified
    np.testing.assert_array_equal(second.images, first.images)
    # A Ray worker can read the shipped file on its own.
    shipped = load_cache_file(first.path)
    assert shipped.ids == first.ids and shipped.name == "jsrt"
    np.testing.assert_array_equal(shipped.masks["clavicles"], first.masks["clavicles"])
    # Another size is another entry, not a replacement.
    load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 16, cache_dir=tmp_path)
    assert len(_cache_files(tmp_path)) == 2


def test_changed_source_file_invalidates_the_cache(write_jsrt, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt(side=64)
    cache = tmp_path / "cache"
    before = load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=cache)
    mask = scr_dir / "fold1" / "masks" / "heart" / "JPCLN001.gif"
    # Same size, new content and modification time: an edited mask.
    stat = mask.stat()
    mask.write_bytes(mask.read_bytes())
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=cache)
    assert after.key != before.key
    # The stale entry of the same folders is gone; only the new one remains.
    assert _cache_files(cache) == [after.path]


def test_removed_case_invalidates_the_cache(write_montgomery, tmp_path):
    root = write_montgomery(ids=("MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0"))
    cache = tmp_path / "cache"
    before = load_target("montgomery", root, 16, cache_dir=cache)
    for path in root.rglob("MCUCXR_0002_1.png"):
        path.unlink()
    after = load_target("montgomery", root, 16, cache_dir=cache)
    assert before.ids == ["MCUCXR_0001_0", "MCUCXR_0002_1", "MCUCXR_0003_0"]
    assert after.ids == ["MCUCXR_0001_0", "MCUCXR_0003_0"] and after.key != before.key
    np.testing.assert_array_equal(after.images[1], before.images[2])


def test_corrupt_cache_file_is_rebuilt(phantom_dirs, tmp_path):
    first = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 16, cache_dir=tmp_path)
    first.path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable cxrsweep cache file"):
        load_cache_file(first.path)
    rebuilt = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 16, cache_dir=tmp_path)
    np.testing.assert_allclose(rebuilt.images, first.images, atol=1e-3)


def test_default_cache_dir_follows_the_environment(phantom_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRSWEEP_CACHE", str(tmp_path / "from-env"))
    dataset = load_target("shenzhen", phantom_dirs["shenzhen"], 16)
    assert dataset.path.parent == tmp_path / "from-env"
    assert dataset.skipped and all({"id", "reason"} <= set(item) for item in dataset.skipped)
    assert load_cache_file(dataset.path).skipped == dataset.skipped


def test_process_pool_gives_the_same_arrays(phantom_dirs, tmp_path, monkeypatch):
    serial = load_target("montgomery", phantom_dirs["montgomery"], 16, cache_dir=tmp_path / "serial")
    monkeypatch.setenv("CXRSWEEP_DATA_WORKERS", "2")
    pooled = load_target("montgomery", phantom_dirs["montgomery"], 16, cache_dir=tmp_path / "pooled")
    np.testing.assert_array_equal(pooled.images, serial.images)
    np.testing.assert_array_equal(pooled.masks["lungs"], serial.masks["lungs"])


def test_bad_image_size_is_rejected(phantom_dirs, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 0, cache_dir=tmp_path)
