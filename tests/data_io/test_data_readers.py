"""Each reader against files written in the exact original formats, and each bad file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_io.readers import image_size, jsrt_img_side, read_gray, read_jsrt_img, read_mask


def test_jsrt_img_is_big_endian_and_square_from_file_length(tmp_path):
    values = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 16  # up to 4080, 12 bits
    path = tmp_path / "JPCLN001.IMG"
    path.write_bytes(values.astype(">u2").tobytes())
    assert jsrt_img_side(path) == 16
    decoded = read_jsrt_img(path)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, values)
    # Little-endian decoding would swap bytes: the value 16 (0x0010) would read as 4096.
    assert decoded[0, 1] == 16


@pytest.mark.parametrize(
    "n_bytes, problem",
    [(2 * 16 * 16 - 2, "not a square"), (2 * 16 * 16 + 1, "whole number"), (0, "whole number")],
)
def test_truncated_or_non_square_img_names_the_file(tmp_path, n_bytes, problem):
    path = tmp_path / "JPCNN007.IMG"
    path.write_bytes(b"\x01" * n_bytes)
    with pytest.raises(ValueError, match=problem) as error:
        read_jsrt_img(path)
    assert "JPCNN007.IMG" in str(error.value)


def test_missing_img_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="JPCLN404.IMG"):
        read_jsrt_img(tmp_path / "JPCLN404.IMG")


def test_palette_png_is_read_through_its_inverted_palette(tmp_path):
    display = np.tile(np.array([0, 40, 200, 255], dtype=np.uint8), (4, 1))
    image = Image.frombytes("P", (4, 4), (255 - display).tobytes())
    image.putpalette([level for index in range(256) for level in (255 - index,) * 3])
    path = tmp_path / "JPCLN001.png"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"
    np.testing.assert_array_equal(read_gray(path), display)


def test_sixteen_bit_png_keeps_twelve_bit_values(tmp_path):
    values = np.array([[0, 1000], [4095, 2048]], dtype=np.uint16)
    path = tmp_path / "MCUCXR_0001_0.png"
    Image.fromarray(values).save(path)
    decoded = read_gray(path)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, values)
    assert image_size(path) == (2, 2)


def test_rgb_png_becomes_gray(tmp_path):
    rgb = np.zeros((3, 5, 3), dtype=np.uint8)
    rgb[..., :] = 120
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    decoded = read_gray(path)
    assert decoded.shape == (3, 5) and int(decoded.max()) == 120


def test_unreadable_png_names_the_file(tmp_path):
    path = tmp_path / "CHNCXR_0001_0.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match="CHNCXR_0001_0.png: not a readable image"):
        read_gray(path)
    with pytest.raises(ValueError, match="CHNCXR_0001_0.png"):
        image_size(tmp_path / "CHNCXR_0001_0.png")


def test_mask_threshold_is_half_the_maximum(tmp_path):
    # A merged mask resized with interpolation: values 0..204, foreground above 102.
    values = np.array([[0, 50, 101, 103, 204]], dtype=np.uint8)
    path = tmp_path / "merged.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(read_mask(path), [[False, False, False, True, True]])


def test_gif_mask_and_empty_mask(tmp_path):
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[2:4, 1:3] = 255
    Image.fromarray(mask).save(tmp_path / "m.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.gif"), mask > 0)
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(tmp_path / "empty.gif")
    assert not read_mask(tmp_path / "empty.gif").any()
