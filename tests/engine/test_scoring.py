"""Scores computed on the device (engine/scoring.py) equal the numpy reference
(predict_masks + score_per_image, one image at a time) exactly, with and without content crops."""
import numpy as np
import pytest
import torch
from torch import nn

from data_io.cache import load_jsrt, load_target
from data_io.preprocess import CropBox, mask_to_full_frame
from engine.data import FullFrame, score_per_image
from engine.device import predict_masks
from engine.scoring import FramePlacement, SplitScorer, predict_and_score
from models.registry import build_segmenter

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mild_phantoms(tmp_path_factory):
    """JSRT-like films (nothing trimmed) and mild Montgomery-like films (padded and collimated:
    every one trimmed), through the real cache at 64 px."""
    from data_io.phantoms import synthesize

    root = tmp_path_factory.mktemp("scoring-phantoms")
    folders = synthesize(root / "data", n_source=6, n_target=10, source_size=128, target_size=128, seed=5,
                         target_shift="mild")
    jsrt = load_jsrt(folders["jsrt"], folders["scr"], 64, cache_dir=root / "cache")
    target = load_target("montgomery", folders["montgomery"], 64, cache_dir=root / "cache")
    return jsrt, target


class Threshold(nn.Module):
    """Logits whose argmax is "image brighter than its mean": irregular masks of every size."""

    def forward(self, images):
        return torch.cat([-images, images], dim=1)


def reference(model, images, masks, frame):
    return score_per_image(predict_masks(model, images, CPU), masks, frame)


@pytest.mark.parametrize("name", ["threshold", "unet"])
def test_split_scores_equal_the_reference_with_and_without_crops(mild_phantoms, name):
    jsrt, target = mild_phantoms
    # Built here, after the seed: a network built at collection time would start from whatever
    # the global generator held then (which depends on the tests collected before this one).
    torch.manual_seed(0)
    model = Threshold() if name == "threshold" else build_segmenter("unet", width=0.125)
    everything = np.arange(len(target.ids))
    frame = FullFrame.of(target, "lungs", everything)
    assert frame is not None and FullFrame.of(jsrt, "lungs", np.arange(len(jsrt.ids))) is None
    for images, masks, split_frame in [(jsrt.images, jsrt.masks["lungs"], None),
                                       (target.images, target.masks["lungs"], frame),
                                       (target.images, target.masks["lungs"], None)]:
        expected = reference(model, images, masks, split_frame)
        scorer = SplitScorer(images, masks, split_frame, CPU)
        got = scorer(model)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        assert 0 < expected[0].mean() < 1  # not a degenerate case where everything scores 0 or 1
        predictions, jaccards, dices = predict_and_score(model, images, masks, split_frame, CPU)
        np.testing.assert_array_equal(predictions, predict_masks(model, images, CPU))
        np.testing.assert_array_equal(jaccards, expected[0])
    # The crops change the numbers: the placement is not skipped where it matters.
    with_frame = SplitScorer(target.images, target.masks["lungs"], frame, CPU)(model)[0]
    without = SplitScorer(target.images, target.masks["lungs"], None, CPU)(model)[0]
    assert not np.array_equal(with_frame, without)


def test_placement_equals_mask_to_full_frame_bit_for_bit():
    """Random predictions and crop boxes of every kind: one side, all sides, a sliver, none."""
    rng = np.random.default_rng(3)
    size = 48
    boxes = [CropBox.full(4020, 4892), CropBox(0, 300, 4020, 4892, 4020, 4892), CropBox(17, 0, 500, 611, 512, 611),
             CropBox(100, 90, 104, 95, 512, 512), CropBox(0, 0, 511, 512, 512, 512), CropBox.full(64, 64),
             CropBox(5, 7, 60, 58, 64, 64)]
    boxes += [CropBox(int(t), int(left), int(h - b), int(w - r), int(h), int(w))
              for t, left, b, r, h, w in zip(*(rng.integers(0, 90, 20) for _ in range(4)), rng.integers(200, 900, 20),
                                          rng.integers(200, 900, 20))]
    predictions = (rng.random((len(boxes), size, size)) < rng.random((len(boxes), 1, 1))).astype(np.uint8)
    frame = FullFrame(masks=np.zeros_like(predictions), crop_boxes=np.array([box.as_row() for box in boxes]))
    placed = FramePlacement(frame, (size, size), CPU).apply(torch.from_numpy(predictions)).numpy()
    expected = np.stack([mask_to_full_frame(p, box, (size, size)) for p, box in zip(predictions, boxes)])
    np.testing.assert_array_equal(placed, expected)
    assert not np.array_equal(placed, predictions)
    np.testing.assert_array_equal(placed[[0, 5]], predictions[[0, 5]])  # untrimmed: unchanged


def test_truth_that_is_not_binary_is_refused():
    images = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(ValueError, match="truth: expected a binary mask"):
        SplitScorer(images, np.full((2, 32, 32), 2, np.uint8), None, CPU)


def test_foreground_masks_on_the_device_match_the_host_threshold():
    """The target selection's masks: thresholded on the device, from host images or from images
    uploaded once, equal the host threshold of the foreground probability."""
    from engine.device import as_batch, foreground_masks, predict_foreground

    torch.manual_seed(0)
    model = build_segmenter("unet", width=0.125)
    images = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    device = torch.device("cpu")
    expected = predict_foreground(model, images, device) >= 0.5
    assert 0 < expected.mean() < 1  # both classes present: the comparison means something
    np.testing.assert_array_equal(foreground_masks(model, images, device), expected)
    np.testing.assert_array_equal(foreground_masks(model, as_batch(images, device), device), expected)
