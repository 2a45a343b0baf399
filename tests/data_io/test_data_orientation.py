"""Orientation: display look (bone bright) and the patient's left lung on the image's right half."""
from __future__ import annotations

import numpy as np
from PIL import Image

from data_io.cache import load_jsrt
from data_io.datasets import to_display_convention
from data_io.readers import read_jsrt_img, read_mask


def _column_centroid(mask: np.ndarray) -> float:
    columns = np.nonzero(mask)[1]
    return float(columns.mean()) / mask.shape[1]


def test_phantom_left_lung_lies_on_the_image_right(phantom_dirs):
    for gif in sorted((phantom_dirs["scr"]).glob("fold*/masks/left lung/*.gif")):
        right_gif = gif.parent.parent / "right lung" / gif.name
        assert _column_centroid(read_mask(gif)) > 0.5 > _column_centroid(read_mask(right_gif))
    for png in sorted((phantom_dirs["montgomery"] / "ManualMask" / "leftMask").glob("*.png")):
        right_png = png.parent.parent / "rightMask" / png.name
        assert _column_centroid(read_mask(png)) > _column_centroid(read_mask(right_png))


def test_white_is_zero_is_inverted():
    stored = np.array([[4095, 0], [1000, 3000]], dtype=np.uint16)
    masks = {"lungs": np.ones((2, 2), dtype=bool)}
    display, _, mirrored = to_display_convention(stored, masks, white_is_zero=True)
    np.testing.assert_array_equal(display, [[0, 4095], [3095, 1095]])
    assert not mirrored
    same, _, _ = to_display_convention(stored, masks, white_is_zero=False)
    np.testing.assert_array_equal(same, stored)


def test_jsrt_lungs_come_out_dark(phantom_dirs, tmp_path):
    raw = read_jsrt_img(next(phantom_dirs["jsrt"].glob("*.IMG")))
    dataset = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 32, cache_dir=tmp_path)
    lungs = dataset.masks["lungs"].astype(bool)
    # Stored 'white is zero' the lungs are numerically high; displayed they are dark.
    assert raw[raw.shape[0] // 2, raw.shape[1] // 4] > np.median(raw)
    assert dataset.images[lungs].mean() < 0 < dataset.images[dataset.masks["heart"].astype(bool)].mean()


def test_mirrored_copy_is_flipped_back(write_jsrt, tmp_path):
    jsrt_dir, scr_dir, _ = write_jsrt(side=64, root=tmp_path / "plain")
    expected = load_jsrt(jsrt_dir, scr_dir, 32, cache_dir=tmp_path / "cache")
    mirror_jsrt, mirror_scr, _ = write_jsrt(side=64, root=tmp_path / "mirrored")
    # Mirror one case on disk: image and every mask, names unchanged (patient's sides).
    img = mirror_jsrt / "JPCLN002.IMG"
    img.write_bytes(read_jsrt_img(img)[:, ::-1].astype(">u2").tobytes())
    for gif in mirror_scr.glob("fold*/masks/*/JPCLN002.gif"):
        Image.fromarray(read_mask(gif)[:, ::-1].astype(np.uint8) * 255).save(gif)
    assert _column_centroid(read_mask(next(mirror_scr.glob("fold*/masks/left lung/JPCLN002.gif")))) < 0.5
    loaded = load_jsrt(mirror_jsrt, mirror_scr, 32, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(loaded.images, expected.images, atol=1e-2)
    for task in expected.masks:
        np.testing.assert_array_equal(loaded.masks[task], expected.masks[task])
