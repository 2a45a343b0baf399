"""Layout detection for originals and re-packaged variants, the parent-folder rule, and bad folders."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from data_io.cache import load_jsrt, load_target
from data_io.datasets import scan_jsrt, scan_target


def test_original_jsrt_and_scr_folds_with_spaces(write_jsrt, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt()
    assert (scr_dir / "fold1" / "masks" / "left lung").is_dir()
    scan = scan_jsrt(jsrt_dir, scr_dir)
    assert [case.id for case in scan.cases] == ["JPCLN001", "JPCLN002", "JPCNN001"]
    assert scan.image_format == "jsrt-img"
    assert {case.masks["heart"].parent.parent.parent.name for case in scan.cases} == {"fold1", "fold2"}


def test_flat_scr_layout_with_underscores(write_jsrt):
    jsrt_dir, scr_dir, _ = write_jsrt(scr_layout="flat", structure_sep="_")
    assert (scr_dir / "masks" / "left_clavicle").is_dir()
    scan = scan_jsrt(jsrt_dir, scr_dir)
    assert len(scan.cases) == 3
    assert set(scan.cases[0].masks) == {"left lung", "right lung", "heart", "left clavicle", "right clavicle"}


@pytest.mark.parametrize("suffix", [".png", ".IMG.png"])
def test_repackaged_jsrt_png_through_inverted_palette(write_jsrt, tmp_path, suffix):
    jsrt_dir, scr_dir, display = write_jsrt(image_format=suffix, side=32)
    scan = scan_jsrt(jsrt_dir, scr_dir)
    assert scan.image_format == "png" and [c.id for c in scan.cases] == sorted(display)
    dataset = load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=tmp_path / "cache")
    # Read through the palette the lungs are dark (display look), not bright raw indices.
    lungs = dataset.masks["lungs"].astype(bool)
    assert dataset.images[lungs].mean() < dataset.images[~lungs].mean() - 0.5


def test_parent_folders_are_accepted(write_jsrt, write_montgomery, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt(root=tmp_path / "jsrt_parent")
    # --jsrt given the folder above All247images; --scr given the folder above scr/.
    shutil.move(str(scr_dir), str(tmp_path / "scr_parent" / "scr"))
    scan = scan_jsrt(tmp_path / "jsrt_parent", tmp_path / "scr_parent")
    assert scan.image_root == jsrt_dir and len(scan.cases) == 3
    montgomery_root = write_montgomery(root=tmp_path / "downloads")
    assert scan_target("montgomery", tmp_path / "downloads").image_root == montgomery_root / "CXR_png"
    assert scan_target("montgomery", montgomery_root).image_root == montgomery_root / "CXR_png"


def test_montgomery_left_right_masks_are_merged(write_montgomery, tmp_path):
    root = write_montgomery(shape=(80, 64))
    scan = scan_target("montgomery", root)
    assert scan.mask_layout == "left-right"
    dataset = load_target("montgomery", root, 32, cache_dir=tmp_path / "cache")
    assert dataset.ids == ["MCUCXR_0001_0", "MCUCXR_0002_1"]
    assert set(dataset.masks) == {"lungs"}
    lungs = dataset.masks["lungs"][0]
    # Both lungs, one on each half of the image.
    assert lungs[:, :16].any() and lungs[:, 16:].any()


def test_montgomery_merged_non_binary_mask_is_thresholded(write_montgomery, tmp_path):
    root = write_montgomery(shape=(64, 64), layout="merged")
    stored = np.asarray(Image.open(next((root / "ManualMask").glob("*.png"))))
    assert len(np.unique(stored)) > 2 and stored.max() < 255  # genuinely not binary
    scan = scan_target("montgomery", root)
    assert scan.mask_layout == "merged"
    dataset = load_target("montgomery", root, 64, cache_dir=tmp_path / "cache")
    expected = stored > stored.max() / 2
    np.testing.assert_array_equal(dataset.masks["lungs"][0].astype(bool), expected)


def test_shenzhen_missing_mask_is_a_counted_skip(phantom_dirs, tmp_path):
    scan = scan_target("shenzhen", phantom_dirs["shenzhen"])
    images = sorted((phantom_dirs["shenzhen"] / "CXR_png").glob("*.png"))
    masks = sorted((phantom_dirs["shenzhen"] / "mask").glob("*_mask.png"))
    assert len(scan.skipped) == len(images) - len(masks) >= 1
    assert len(scan.cases) == len(masks)
    skipped_ids = {item["id"] for item in scan.skipped}
    assert skipped_ids.isdisjoint(case.id for case in scan.cases)
    assert all("no lungs mask" in item["reason"] for item in scan.skipped)


# --- bad input ----------------------------------------------------------------------------------


def test_mask_without_image_names_the_mask(write_jsrt):
    jsrt_dir, scr_dir, _ = write_jsrt()
    (jsrt_dir / "JPCNN001.IMG").unlink()
    with pytest.raises(ValueError, match=r"JPCNN001\.gif: mask without an image"):
        scan_jsrt(jsrt_dir, scr_dir)


def test_image_without_mask_names_the_image(write_jsrt):
    jsrt_dir, scr_dir, _ = write_jsrt()
    (scr_dir / "fold2" / "masks" / "heart" / "JPCLN002.gif").unlink()
    with pytest.raises(ValueError, match=r"JPCLN002\.IMG: image without its 'heart' mask"):
        scan_jsrt(jsrt_dir, scr_dir)


def test_montgomery_image_without_mask_is_an_error(write_montgomery):
    root = write_montgomery()
    (root / "ManualMask" / "leftMask" / "MCUCXR_0002_1.png").unlink()
    with pytest.raises(ValueError, match=r"MCUCXR_0002_1\.png: image without its mask"):
        scan_target("montgomery", root)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "scr").mkdir()
    with pytest.raises(ValueError, match=r"empty: no JSRT images"):
        scan_jsrt(tmp_path / "empty", tmp_path / "scr")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_target("montgomery", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no montgomery images"):
        scan_target("montgomery", tmp_path / "empty")


def test_mask_size_must_follow_the_two_to_one_rule(write_jsrt, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt(side=64)
    odd_one = scr_dir / "fold1" / "masks" / "heart" / "JPCLN001.gif"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(odd_one)
    with pytest.raises(ValueError,
                       match=r"heart/JPCLN001\.gif: mask is 16x16 but the other masks of JPCLN001 are 32x32"):
        load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=tmp_path / "cache")
    for name in ("left lung", "right lung", "heart", "left clavicle", "right clavicle"):
        Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(scr_dir / "fold1" / "masks" / name / "JPCLN001.gif")
    with pytest.raises(ValueError, match=r"left lung/JPCLN001\.gif: mask is 64x64 but its image JPCLN001\.IMG "
                                         r"is 64x64; SCR masks are half"):
        load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=tmp_path / "cache")


def test_target_mask_size_must_match_its_image(write_montgomery, tmp_path):
    root = write_montgomery(shape=(80, 64))
    Image.fromarray(np.zeros((64, 80), dtype=np.uint8)).save(root / "ManualMask" / "rightMask" / "MCUCXR_0001_0.png")
    with pytest.raises(ValueError, match=r"MCUCXR_0001_0\.png: mask is 64x80 but its image"):
        load_target("montgomery", root, 16, cache_dir=tmp_path / "cache")


def test_truncated_img_fails_the_load(write_jsrt, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt(side=64)
    path = jsrt_dir / "JPCLN002.IMG"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"JPCLN002\.IMG: .*not a square"):
        load_jsrt(jsrt_dir, scr_dir, 16, cache_dir=tmp_path / "cache")


def test_ambiguous_parent_folder_asks_for_one(phantom_dirs):
    with pytest.raises(ValueError, match="several subfolders"):
        scan_target("montgomery", phantom_dirs["montgomery"].parent)


def test_unreadable_target_png_fails_the_load_naming_it(write_montgomery, tmp_path):
    root = write_montgomery()
    broken = root / "CXR_png" / "MCUCXR_0002_1.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header survives, pixel data cut off
    with pytest.raises(ValueError, match=r"MCUCXR_0002_1\.png: not a readable image"):
        load_target("montgomery", root, 16, cache_dir=tmp_path / "cache")


def test_shenzhen_masks_in_manualmask_folder(phantom_dirs, tmp_path):
    copy = tmp_path / "ChinaSet_AllFiles"
    shutil.copytree(phantom_dirs["shenzhen"] / "CXR_png", copy / "CXR_png")
    shutil.copytree(phantom_dirs["shenzhen"] / "mask", copy / "ManualMask")
    scan = scan_target("shenzhen", tmp_path)  # the folder above ChinaSet_AllFiles
    original = scan_target("shenzhen", phantom_dirs["shenzhen"])
    assert [c.id for c in scan.cases] == [c.id for c in original.cases]
    assert [item["id"] for item in scan.skipped] == [item["id"] for item in original.skipped]
    assert all("ManualMask" in item["reason"] for item in scan.skipped)
