"""Phantoms: real on-disk formats, determinism, anatomical variation, and a target that stays
different after per-image standardisation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_io.cache import load_jsrt, load_target
from data_io.phantoms import MildShift, synthesize
from data_io.readers import read_gray


def test_formats_and_sizes_follow_the_real_data(phantom_dirs):
    imgs = sorted(phantom_dirs["jsrt"].glob("*.IMG"))
    assert [p.stem for p in imgs][:1] == ["JPCLN001"] and any(p.stem.startswith("JPCNN") for p in imgs)
    assert all(p.stat().st_size == 2 * 128 * 128 for p in imgs)
    with Image.open(next(phantom_dirs["scr"].glob("fold1/masks/left clavicle/*.gif"))) as gif:
        assert gif.format == "GIF" and gif.size == (64, 64)  # half the .IMG side
    png = next((phantom_dirs["montgomery"] / "CXR_png").glob("MCUCXR_*.png"))
    with Image.open(png) as image:
        assert image.mode.startswith("I;16")
        height, width = image.size[1], image.size[0]
    assert height != width
    assert read_gray(png).max() <= 4095  # 12-bit values in a 16-bit PNG
    with Image.open(next((phantom_dirs["montgomery"] / "ManualMask" / "leftMask").glob("*.png"))) as mask:
        assert mask.size == (width, height)


def test_same_seed_same_bytes_other_seed_other_cases(tmp_path):
    kwargs = dict(n_source=2, n_target=1, source_size=64, target_size=64)
    first = synthesize(tmp_path / "a", seed=11, **kwargs)
    again = synthesize(tmp_path / "b", seed=11, **kwargs)
    other = synthesize(tmp_path / "c", seed=12, **kwargs)
    name = "JPCLN001.IMG"
    assert (first["jsrt"] / name).read_bytes() == (again["jsrt"] / name).read_bytes()
    assert (first["jsrt"] / name).read_bytes() != (other["jsrt"] / name).read_bytes()


def test_cases_vary_in_shape_and_position(phantom_dirs, tmp_path):
    dataset = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 32, cache_dir=tmp_path)
    for task, mask in dataset.masks.items():
        flat = mask.reshape(len(mask), -1).astype(bool)
        pairwise_different = [(flat[i] != flat[j]).mean() for i in range(len(flat)) for j in range(i + 1, len(flat))]
        assert min(pairwise_different) > 0, task
        areas = flat.mean(axis=1)
        assert areas.std() > 0.05 * areas.mean(), task


def test_source_anatomy_reads_like_a_chest_film(phantom_dirs, tmp_path):
    dataset = load_jsrt(phantom_dirs["jsrt"], phantom_dirs["scr"], 64, cache_dir=tmp_path)
    lungs, heart, clavicles = (dataset.masks[t].astype(bool) for t in ("lungs", "heart", "clavicles"))
    for image, lung, cardiac, bone in zip(dataset.images, lungs, heart, clavicles):
        # Aerated lung dark, heart and bone bright: the usual display look.
        assert image[lung].mean() < image[cardiac & ~lung].mean()
        assert image[lung].mean() < image[bone].mean()
        # Lungs fill a sizeable part of the film, clavicles a small one.
        assert 0.1 < lung.mean() < 0.45 and bone.mean() < 0.05


def _thoracic_box(size: int) -> np.ndarray:
    """Where the lungs can be, so the dark air around the body does not count."""
    box = np.zeros((size, size), dtype=bool)
    box[size // 5 : size * 5 // 6, size // 8 : size * 7 // 8] = True
    return box


def _threshold_jaccard(images, masks, threshold):
    """Mean per-image Jaccard of the rule 'lung = darker than threshold, inside the thoracic box'."""
    box = _thoracic_box(images.shape[-1])
    scores = []
    for image, mask in zip(images, masks):
        prediction = (image < threshold) & box
        union = (prediction | mask).sum()
        scores.append((prediction & mask).sum() / union if union else 1.0)
    return float(np.mean(scores))


@pytest.mark.parametrize("inverted_fraction", [0.0, 1.0])
def test_target_stays_shifted_after_standardisation(tmp_path, inverted_fraction):
    written = synthesize(tmp_path / "ph", n_source=8, n_target=8, source_size=96, target_size=96, seed=4,
                         target_inverted_fraction=inverted_fraction)
    source = load_jsrt(written["jsrt"], written["scr"], 48, cache_dir=tmp_path / "cache")
    target = load_target("montgomery", written["montgomery"], 48, cache_dir=tmp_path / "cache")
    source_lungs, target_lungs = source.masks["lungs"].astype(bool), target.masks["lungs"].astype(bool)
    thresholds = np.linspace(-2, 1.5, 36)
    source_scores = [_threshold_jaccard(source.images, source_lungs, t) for t in thresholds]
    best = int(np.argmax(source_scores))
    # An intensity rule fitted on the standardised source works there and fails on the
    # standardised target, even without any inverted image...
    assert source_scores[best] > 0.6
    assert _threshold_jaccard(target.images, target_lungs, thresholds[best]) < source_scores[best] - 0.25
    # ...while the target's own labels mark lungs of about the source's size: the framing is
    # close to JSRT's, so the shift is in the detector, not in the geometry.
    assert 0.75 < target_lungs.mean() / source_lungs.mean() < 1.3


@pytest.mark.parametrize("inverted_fraction, expected", [(None, "bright"), (1.0, "bright"), (0.0, "dark"), (0.5, "mixed")])
def test_inverted_fraction_sets_the_lung_polarity_image_by_image(tmp_path, inverted_fraction, expected):
    kwargs = {} if inverted_fraction is None else {"target_inverted_fraction": inverted_fraction}
    written = synthesize(tmp_path / "ph", n_source=1, n_target=8, source_size=64, target_size=96, seed=4, **kwargs)
    target = load_target("montgomery", written["montgomery"], 48, cache_dir=tmp_path / "cache")
    box = _thoracic_box(48)
    # Standardised lung brightness against the rest of the thorax, one sign per image.
    contrast = np.array([image[lung].mean() - image[box & ~lung].mean()
                         for image, lung in zip(target.images, target.masks["lungs"].astype(bool))])
    if expected == "bright":  # the default: every image inverted, one consistent shift
        assert (contrast > 0).all(), contrast
    elif expected == "dark":
        assert (contrast < 0).all(), contrast
    else:
        assert (contrast > 0).any() and (contrast < 0).any(), contrast


def test_inverted_fraction_out_of_range_is_refused(tmp_path):
    with pytest.raises(ValueError, match="target_inverted_fraction"):
        synthesize(tmp_path / "ph", n_source=1, n_target=1, source_size=64, target_size=64, target_inverted_fraction=1.5)


# --- the mild regime ------------------------------------------------------------------------


def test_mild_target_keeps_the_polarity_and_is_padded_to_a_square(tmp_path):
    written = synthesize(tmp_path / "ph", n_source=1, n_target=8, source_size=64, target_size=96, seed=4,
                         target_shift="mild")
    pngs = sorted((written["montgomery"] / "CXR_png").glob("*.png"))
    banded = 0
    for png in pngs:
        image = read_gray(png)
        left = read_gray(written["montgomery"] / "ManualMask" / "leftMask" / png.name)
        assert image.shape == left.shape == (96, 96)  # padded to a square, masks alike
        # Zero padding: whole rows or columns at exactly 0 along at least one side.
        edges = [image[0], image[-1], image[:, 0], image[:, -1]]
        banded += any((edge == 0).all() for edge in edges)
    assert banded == len(pngs)
    target = load_target("montgomery", written["montgomery"], 48, cache_dir=tmp_path / "cache")
    contrast = []
    for image, lung in zip(target.images, target.masks["lungs"].astype(bool)):
        # Against the mediastinum and heart between the lungs (the padding is darker than both).
        rows, columns = np.nonzero(lung)
        between = np.zeros_like(lung)
        between[rows.min():rows.max() + 1, columns.min():columns.max() + 1] = True
        contrast.append(image[lung].mean() - image[between & ~lung].mean())
    assert all(c < 0 for c in contrast), contrast  # lungs dark, as in the source


def test_a_mild_factor_switched_off_leaves_the_rest_of_each_case_alone(tmp_path):
    kwargs = dict(n_source=1, n_target=3, source_size=64, target_size=96, seed=2)
    full = synthesize(tmp_path / "full", target_shift="mild", **kwargs)["montgomery"]
    quiet = synthesize(tmp_path / "quiet", target_shift=MildShift().neutral("noise", "bias"), **kwargs)["montgomery"]
    for png in sorted((full / "CXR_png").glob("*.png")):
        # Same anatomy, framing and padding; another detector.
        for side in ("leftMask", "rightMask"):
            assert (read_gray(full / "ManualMask" / side / png.name) == read_gray(quiet / "ManualMask" / side / png.name)).all()
        assert not (read_gray(png) == read_gray(quiet / "CXR_png" / png.name)).all()
    unpadded = synthesize(tmp_path / "unpadded", target_shift=MildShift().neutral("padding"), **kwargs)["montgomery"]
    assert any(read_gray(p).shape[0] != read_gray(p).shape[1] for p in (unpadded / "CXR_png").glob("*.png"))


def test_mild_shift_refuses_unknown_factors_and_the_inverted_fraction(tmp_path):
    with pytest.raises(ValueError, match="unknown mild-shift factor"):
        MildShift().neutral("contrast-ish")
    with pytest.raises(ValueError, match="severe target only"):
        synthesize(tmp_path / "ph", n_source=1, n_target=1, source_size=64, target_size=64, target_shift="mild",
                   target_inverted_fraction=0.5)
    with pytest.raises(ValueError, match="target_shift"):
        synthesize(tmp_path / "ph", n_source=1, n_target=1, source_size=64, target_size=64, target_shift="medium")
