"""The content crop on hand-made radiographs, mapping masks back to the whole frame, and the
crop setting in the cache (key, arrays, statistics)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from data_io.cache import cache_key, load_cache_file, load_jsrt, load_target
from data_io.datasets import scan_target
from data_io.preprocess import (
    MAX_SIDE_FRACTION,
    CropBox,
    find_content_box,
    mask_to_full_frame,
    prepare_radiograph,
    resize_mask,
)

HEIGHT, WIDTH = 120, 100


def chest(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit film as displayed: noisy dark air, a brighter body, two dark lungs in it; and the lung mask.
    The body fills the film's width except a dark air margin on the left (air is never trimmed)."""
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    body = (xx > 0.12) & (xx < 0.97)
    lungs = ((((xx - 0.35) / 0.13) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1)
             | (((xx - 0.72) / 0.13) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1))
    display = 0.1 + 0.6 * body - 0.35 * lungs + 0.15 * yy * body + rng.normal(0, 0.02, (height, width))
    return np.clip(display * 4000, 0, 4095).astype(np.float32), lungs


@pytest.fixture
def film() -> tuple[np.ndarray, np.ndarray]:
    return chest(np.random.default_rng(0))


def test_a_film_without_borders_is_not_cropped(film):
    pixels, _ = film
    assert find_content_box(pixels, "plain.png") == CropBox.full(HEIGHT, WIDTH)


@pytest.mark.parametrize("side", ["top", "bottom", "left", "right"])
def test_zero_padding_is_trimmed_on_each_side(film, side):
    pixels, _ = film
    widths = {"top": (17, 0, 0, 0), "bottom": (0, 17, 0, 0), "left": (0, 0, 17, 0), "right": (0, 0, 0, 17)}[side]
    top, bottom, left, right = widths
    padded = np.pad(pixels, ((top, bottom), (left, right)))
    box = find_content_box(padded, "padded.png")
    assert box.as_row() == (top, left, top + HEIGHT, left + WIDTH, HEIGHT + top + bottom, WIDTH + left + right)


def test_padding_of_any_constant_gray_level_is_trimmed(film):
    pixels, _ = film
    padded = np.pad(pixels, ((0, 0), (30, 0)), constant_values=2000)  # mid-gray, not black
    assert find_content_box(padded, "gray-padding.png").left == 30


def test_a_bright_collimation_band_is_trimmed_and_dark_air_is_kept(film):
    pixels, _ = film
    rng = np.random.default_rng(1)
    collimated = pixels.copy()
    # Unexposed film: bright, with a little detector noise, along the top.
    collimated[:12] = 3900 + rng.normal(0, 15, (12, WIDTH))
    box = find_content_box(collimated, "collimated.png")
    # The band goes; the dark, noisy air margin on the left (12 % of the width) stays.
    assert (box.top, box.bottom, box.left, box.right) == (12, HEIGHT, 0, WIDTH)


def test_padding_around_collimation_is_trimmed_in_both_layers(film):
    pixels, _ = film
    collimated = pixels.copy()
    collimated[:, -9:] = 3950  # collimation on the right
    padded = np.pad(collimated, ((0, 0), (0, 20)))  # then padded on the right
    box = find_content_box(padded, "both.png")
    assert box.right == WIDTH - 9 and (box.top, box.left, box.bottom) == (0, 0, HEIGHT)


def test_never_trims_more_than_a_sane_share_of_a_side(film):
    pixels, _ = film
    padded = np.pad(pixels, ((HEIGHT, 0), (0, 0)))  # half the film is padding
    box = find_content_box(padded, "mostly-padding.png")
    assert box.top == int(MAX_SIDE_FRACTION * 2 * HEIGHT)  # stopped at the cap, content untouched


@pytest.mark.parametrize("pixels", [np.zeros((50, 40)), np.full((50, 40), 7.0)])
def test_a_uniform_image_is_an_error_naming_the_file(pixels):
    with pytest.raises(ValueError, match="blank.png: the image is uniform"):
        find_content_box(pixels, "blank.png")


def test_masks_follow_the_crop_and_map_back_to_the_whole_frame(film):
    pixels, lungs = film
    padded = np.pad(pixels, ((10, 30), (25, 5)))
    padded_lungs = np.pad(lungs, ((10, 30), (25, 5)))
    # Masks at half the image's side, as SCR stores them, follow the same crop.
    half = np.asarray(Image.fromarray(padded_lungs.astype(np.uint8) * 255).resize(
        (padded.shape[1] // 2, padded.shape[0] // 2), Image.BOX)) >= 128
    prepared = prepare_radiograph(padded, 64, source="padded.png", structures={"left lung": half})
    assert prepared.crop.as_row() == (10, 25, 10 + HEIGHT, 25 + WIDTH, HEIGHT + 40, WIDTH + 30)
    cropped, whole = prepared.masks["left lung"], prepared.full_masks["left lung"]
    assert _jaccard(cropped, resize_mask(lungs, 64)) > 0.95  # the crop frame holds the unpadded film
    assert (whole == resize_mask(half, 64)).all()
    # Back to the whole frame: at the cache's size and at the file's own size.
    assert _jaccard(mask_to_full_frame(cropped, prepared.crop, (64, 64)), whole) > 0.95
    full_size = mask_to_full_frame(cropped, prepared.crop)
    assert full_size.shape == padded.shape and full_size.dtype == np.uint8
    assert _jaccard(full_size, padded_lungs) > 0.95
    assert not full_size[:10].any() and not full_size[-30:].any() and not full_size[:, :25].any()


def test_mapping_an_uncropped_mask_back_changes_nothing():
    mask = (np.random.default_rng(3).random((32, 32)) > 0.5).astype(np.uint8)
    assert (mask_to_full_frame(mask, CropBox.full(300, 200), (32, 32)) == mask).all()
    probability = mask * 0.8 + 0.1
    assert (mask_to_full_frame(probability, CropBox.full(32, 32)) == mask).all()


def test_an_uncropped_mask_is_stretched_to_a_larger_frame():
    """An untrimmed box at another size than the mask's goes through the interpolation path: a 32 x 32
    mask onto a 64 x 48 frame. Its columns come in equal pairs, so the half-way samples of the 1.5x
    width stretch fall between equal pixels and the thresholded bilinear result is the nearest-neighbour
    enlargement, computed here by PIL."""
    rng = np.random.default_rng(5)
    mask = np.repeat(rng.random((32, 16)) > 0.5, 2, axis=1).astype(np.uint8)
    expected = np.asarray(Image.fromarray(mask * 255).resize((48, 64), Image.NEAREST)) >= 128
    for values in (mask, mask * 0.8 + 0.1):
        stretched = mask_to_full_frame(values, CropBox.full(64, 48), (64, 48))
        assert stretched.shape == (64, 48) and stretched.dtype == np.uint8
        assert (stretched == expected).all()


def test_a_crop_that_cuts_lung_away_shows_in_the_whole_frame():
    """A perfect prediction inside a crop that cut lung off still misses that lung in the whole frame."""
    whole = np.zeros((100, 100), bool)
    whole[20:80, 10:90] = True
    crop = CropBox(0, 50, 100, 100, 100, 100)  # a bad crop: the left half is gone
    prediction = resize_mask(whole, 50, crop.region_in(whole.shape))
    restored = mask_to_full_frame(prediction, crop, (100, 100))
    assert abs(_jaccard(restored, whole) - 0.5) < 0.03


def test_the_crop_setting_is_part_of_the_cache_key_and_of_the_arrays(tmp_path):
    from data_io.phantoms import synthesize

    folders = synthesize(tmp_path / "ph", n_source=5, n_target=4, source_size=64, target_size=96, seed=2,
                         target_shift="mild")
    scan = scan_target("montgomery", folders["montgomery"])
    assert cache_key(scan, 48, crop_borders=True) != cache_key(scan, 48, crop_borders=False)
    cache = tmp_path / "cache"
    cropped = load_target("montgomery", folders["montgomery"], 48, cache_dir=cache)
    whole = load_target("montgomery", folders["montgomery"], 48, cache_dir=cache, crop_borders=False)
    # Both entries stay: switching back and forth does not rebuild.
    assert cropped.path != whole.path and cropped.path.exists() and whole.path.exists()
    assert cropped.crop_borders and not whole.crop_borders
    assert (all(cropped.crop(i).trimmed for i in range(len(cropped)))
            and not any(whole.crop(i).trimmed for i in range(len(whole))))
    # The padded films' whole-frame masks equal the uncropped cache's masks; the cropped ones differ.
    assert (cropped.full_masks["lungs"] == whole.masks["lungs"]).all()
    assert not (cropped.masks["lungs"] == whole.masks["lungs"]).all()
    again = load_cache_file(cropped.path)
    assert ((again.crop_boxes == cropped.crop_boxes).all()
            and (again.full_masks["lungs"] == cropped.full_masks["lungs"]).all())
    assert again.crop_borders and again.key == cropped.key
    # JSRT-like films have no borders: nothing trimmed, whole frame == cropped frame.
    source = load_jsrt(folders["jsrt"], folders["scr"], 32, cache_dir=cache)
    assert not any(source.crop(i).trimmed for i in range(len(source)))
    assert source.full_masks is source.masks


def test_crop_statistics_are_logged_once_when_the_cache_is_built(tmp_path, caplog):
    from data_io.phantoms import synthesize

    folders = synthesize(tmp_path / "ph", n_source=1, n_target=3, source_size=64, target_size=80, seed=5,
                         target_shift="mild")
    with caplog.at_level(logging.INFO, logger="data_io.cache"):
        load_target("montgomery", folders["montgomery"], 32, cache_dir=tmp_path / "cache")
        load_target("montgomery", folders["montgomery"], 32, cache_dir=tmp_path / "cache")  # a hit: silent
    lines = [r.getMessage() for r in caplog.records if "content crop trimmed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("montgomery: content crop trimmed 3 of 3 images")


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_fingerprint_tells_crops_apart_and_ignores_the_setting_where_nothing_was_trimmed():
    import dataclasses

    from data_io.cache import CachedDataset

    rng = np.random.default_rng(0)
    plain = CachedDataset(name="montgomery", ids=["a", "b"], images=rng.normal(size=(2, 16, 16)).astype(np.float32),
                          masks={"lungs": (rng.random((2, 16, 16)) > 0.5).astype(np.uint8)}, image_size=16, key="k")
    assert dataclasses.replace(plain, crop_borders=False).fingerprint == plain.fingerprint
    boxes = np.array([[0, 2, 16, 16, 16, 16], [0, 0, 16, 16, 16, 16]], np.int32)
    cropped = dataclasses.replace(plain, crop_boxes=boxes, full_masks={"lungs": np.roll(plain.masks["lungs"], 1, 2)})
    other_crop = dataclasses.replace(cropped, crop_boxes=boxes + [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    # Same training arrays, other whole-frame scoring: other data for the trial's identity.
    assert len({plain.fingerprint, cropped.fingerprint, other_crop.fingerprint}) == 3
