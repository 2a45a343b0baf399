"""Phantoms: real on-disk formats, determinism, anatomical variation, and a target that stays
different after per-image standardisation."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from data_io.cache import load_jsrt, load_target
from data_io.phantoms import HELD_OUT_SOURCE_LIKE, HeldOutShift, MildShift, synthesize
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


@pytest.mark.parametrize("inverted_fraction, expected",
                         [(None, "bright"), (1.0, "bright"), (0.0, "dark"), (0.5, "mixed")])
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
        synthesize(tmp_path / "ph", n_source=1, n_target=1, source_size=64, target_size=64,
                   target_inverted_fraction=1.5)


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
            assert (read_gray(full / "ManualMask" / side / png.name)
                    == read_gray(quiet / "ManualMask" / side / png.name)).all()
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


# --- the existing regimes stay as they were -------------------------------------------------------

# Written by the code before the held-out regime existed (seed 7, 4 films of 128 px): per film its
# id, shape, mean gray level and lung mask areas. Any change to the mild or severe streams moves all
# of them; the tolerances only absorb last-digit floating-point differences between machines.
EXISTING_REGIMES = {
    "severe": [("MCUCXR_0001_0", (128, 104), 857.8, 1664, 1822), ("MCUCXR_0002_1", (104, 128), 1031.2, 1540, 1688),
               ("MCUCXR_0003_1", (128, 104), 1774.4, 1510, 1903), ("MCUCXR_0004_0", (104, 128), 1021.6, 1773, 1765)],
    "mild": [("MCUCXR_0001_0", (128, 128), 1932.5, 1186, 1610), ("MCUCXR_0002_1", (128, 128), 1324.2, 1107, 1320),
             ("MCUCXR_0003_1", (128, 128), 1930.1, 1365, 1824), ("MCUCXR_0004_1", (128, 128), 1135.0, 1383, 1649)],
}


@pytest.mark.parametrize("regime", sorted(EXISTING_REGIMES))
def test_mild_and_severe_films_are_unchanged(tmp_path, regime):
    root = synthesize(tmp_path / "ph", n_source=3, n_target=4, source_size=64, target_size=128, seed=7,
                      target_shift=regime)["montgomery"]
    for case_id, shape, mean, left_area, right_area in EXISTING_REGIMES[regime]:
        image = read_gray(root / "CXR_png" / f"{case_id}.png")
        left, right = (read_gray(root / "ManualMask" / side / f"{case_id}.png") > 0
                       for side in ("leftMask", "rightMask"))
        assert image.shape == shape
        assert abs(float(image.mean()) - mean) < 0.5
        assert abs(int(left.sum()) - left_area) <= 2 and abs(int(right.sum()) - right_area) <= 2


# --- the held-out regime ------------------------------------------------------------------------------

def _films(root):
    """{case id: (raw pixels, lungs)} of a Montgomery-like folder."""
    films = {}
    for png in sorted((root / "CXR_png").glob("*.png")):
        lungs = ((read_gray(root / "ManualMask" / "leftMask" / png.name) > 0)
                 | (read_gray(root / "ManualMask" / "rightMask" / png.name) > 0))
        films[png.stem] = (read_gray(png).astype(np.int64), lungs)
    return films


HELD_OUT_KWARGS = dict(n_source=1, n_target=6, source_size=64, target_size=128, seed=5)


def test_heldout_target_loads_like_montgomery_with_lungs_where_the_image_is_dark(tmp_path):
    written = synthesize(tmp_path / "ph", target_shift="heldout", **HELD_OUT_KWARGS)
    png = next((written["montgomery"] / "CXR_png").glob("MCUCXR_*.png"))
    with Image.open(png) as image:
        assert image.mode.startswith("I;16")
    films = _films(written["montgomery"])
    assert all(pixels.max() <= 4095 and pixels.shape[0] != pixels.shape[1] for pixels, _ in films.values())
    target = load_target("montgomery", written["montgomery"], 64, cache_dir=tmp_path / "cache")
    assert target.ids == sorted(films) and set(target.masks) == {"lungs"}
    # The same films without the opacity: where nothing was drawn they are the same files.
    clear_root = synthesize(tmp_path / "clear", target_shift=HeldOutShift().neutral("opacity"),
                            **HELD_OUT_KWARGS)["montgomery"]
    clear = load_target("montgomery", clear_root, 64, cache_dir=tmp_path / "cache")
    assert sum((pixels == _films(clear_root)[case][0]).all() for case, (pixels, _) in films.items()) >= 2
    for image, lung in zip(clear.images, clear.masks["lungs"].astype(bool)):
        assert 0.08 < lung.mean() < 0.6  # non-empty lungs of a chest film
        # Darker than the body right around them (chest wall, mediastinum, shoulders, abdomen).
        ring = ndimage.binary_dilation(lung, iterations=4) & ~lung
        assert image[lung].mean() < image[ring].mean() - 0.3


def test_heldout_markers_are_saturated_and_outside_the_lungs(tmp_path):
    marked = _films(synthesize(tmp_path / "marked", target_shift="heldout", **HELD_OUT_KWARGS)["montgomery"])
    plain = _films(synthesize(tmp_path / "plain", target_shift=HeldOutShift().neutral("markers"),
                              **HELD_OUT_KWARGS)["montgomery"])
    with_markers = 0
    for case, (pixels, lungs) in marked.items():
        assert (lungs == plain[case][1]).all()  # markers are in no mask
        drawn = pixels != plain[case][0]
        assert not (drawn & lungs).any()
        if drawn.any():
            with_markers += 1
            # Burned in at the film's white (saturated): its brightest value, which little else reaches.
            assert pixels[drawn].max() == pixels.max() > np.percentile(plain[case][0], 95)
            # Near the edges and corners: inside the outer quarter of the height or width.
            rows, columns = np.nonzero(drawn)
            height, width = pixels.shape
            near_edge = ((np.minimum(rows, height - 1 - rows) < height / 4)
                         | (np.minimum(columns, width - 1 - columns) < width / 4))
            assert near_edge.all()
    assert with_markers >= len(marked) - 1


def test_heldout_opacity_fills_part_of_one_lung_and_brightens_its_mask(tmp_path):
    opaque = _films(synthesize(tmp_path / "opaque", target_shift=HeldOutShift(opacity=1.0),
                               **HELD_OUT_KWARGS)["montgomery"])
    clear = _films(synthesize(tmp_path / "clear", target_shift=HeldOutShift().neutral("opacity"),
                              **HELD_OUT_KWARGS)["montgomery"])
    for case, (pixels, lungs) in opaque.items():
        clear_pixels, clear_lungs = clear[case]
        assert (lungs == clear_lungs).all()  # the truth still includes the opaque lung
        assert pixels[lungs].mean() > clear_pixels[lungs].mean() + 0.01 * pixels.max()
        # One lung, its lower part: the rise below the lungs' middle row outweighs the one above it.
        rows, columns = np.nonzero(lungs)
        lower = np.zeros_like(lungs)
        lower[(rows.min() + rows.max()) // 2:] = True
        rise = pixels - clear_pixels
        assert rise[lungs & lower].mean() > 2 * rise[lungs & ~lower].mean()
        labels, count = ndimage.label(lungs)
        per_lung = sorted(rise[labels == label].mean() for label in range(1, count + 1) if (labels == label).sum() > 20)
        assert per_lung[-1] > 3 * max(per_lung[0], 1.0)


@pytest.mark.parametrize("factor", sorted(HELD_OUT_SOURCE_LIKE))
def test_a_heldout_factor_switched_off_leaves_the_rest_of_each_case_alone(tmp_path, factor):
    kwargs = dict(n_source=1, n_target=4, source_size=64, target_size=96, seed=2)
    full = _films(synthesize(tmp_path / "full", target_shift="heldout", **kwargs)["montgomery"])
    off = _films(synthesize(tmp_path / "off", target_shift=HeldOutShift().neutral(factor), **kwargs)["montgomery"])
    assert list(off) == list(full)  # the same case ids
    geometric = factor in ("geometry", "aspect")
    for case, (pixels, lungs) in full.items():
        if not geometric:  # same anatomy and framing: the same masks
            assert (off[case][1] == lungs).all()
    same_masks = [off[case][1].shape == lungs.shape and (off[case][1] == lungs).all()
                  for case, (_, lungs) in full.items()]
    same_films = [off[case][0].shape == pixels.shape and (off[case][0] == pixels).all()
                  for case, (pixels, _) in full.items()]
    if geometric:
        assert not any(same_masks)
    if factor == "padding":  # off by default: nothing changes
        assert all(same_films)
    else:
        assert not all(same_films)


def test_heldout_with_every_factor_off_is_source_like(tmp_path):
    written = synthesize(tmp_path / "ph", n_source=8, n_target=8, source_size=96, target_size=96, seed=4,
                         target_shift=HeldOutShift().neutral(*HELD_OUT_SOURCE_LIKE))
    assert {read_gray(p).shape for p in (written["montgomery"] / "CXR_png").glob("*.png")} == {(96, 96)}
    source = load_jsrt(written["jsrt"], written["scr"], 48, cache_dir=tmp_path / "cache")
    target = load_target("montgomery", written["montgomery"], 48, cache_dir=tmp_path / "cache")
    source_lungs, target_lungs = source.masks["lungs"].astype(bool), target.masks["lungs"].astype(bool)
    thresholds = np.linspace(-2, 1.5, 36)
    source_scores = [_threshold_jaccard(source.images, source_lungs, t) for t in thresholds]
    best = int(np.argmax(source_scores))
    # The intensity rule fitted on the standardised source works on it as well as on the source
    # (the opposite of the severe target), and the lungs have the source's size.
    assert _threshold_jaccard(target.images, target_lungs, thresholds[best]) > source_scores[best] - 0.1
    assert 0.8 < target_lungs.mean() / source_lungs.mean() < 1.25


def test_heldout_shift_refuses_unknown_factors_and_the_inverted_fraction(tmp_path):
    with pytest.raises(ValueError, match="unknown held-out-shift factor"):
        HeldOutShift().neutral("rotation")
    with pytest.raises(ValueError, match="severe target only"):
        synthesize(tmp_path / "ph", n_source=1, n_target=1, source_size=64, target_size=64, target_shift="heldout",
                   target_inverted_fraction=0.5)


def test_synth_target_shift_heldout_through_the_command_line(tmp_path, capsys):
    from commands.main import main

    out = tmp_path / "ph"
    assert main(["data", "synth", str(out), "--n-source", "1", "--n-target", "2", "--source-size", "64",
                 "--target-size", "80", "--target-shift", "heldout"]) == 0
    shapes = {read_gray(p).shape for p in (out / "montgomery" / "CXR_png").glob("*.png")}
    assert shapes and all(max(shape) == 80 and min(shape) == 64 for shape in shapes)  # Montgomery's ratio, unpadded
