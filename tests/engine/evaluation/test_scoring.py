"""Scores computed on the device (engine/evaluation/scoring.py) equal Jaccard and Dice by their definition
(|P & T| / |P | T| and 2 |P & T| / (|P| + |T|), both empty 1), worked by hand on small masks and
computed independently in numpy on phantoms, with and without content crops."""
import numpy as np
import pytest
import torch
from torch import nn

from data_io.cache import load_jsrt, load_target
from data_io.preprocess import CropBox, mask_to_full_frame
from engine.data.segmentation import FullFrame
from engine.evaluation.scoring import FramePlacement, SplitScorer, predict_and_score
from engine.runtime.prediction import predict_masks
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


def overlap_by_definition(predictions: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard and Dice of each [H, W] pair, one image at a time in plain numpy (both empty: 1)."""
    jaccards, dices = [], []
    for predicted, true in zip(predictions.astype(bool), truth.astype(bool)):
        both, either = int((predicted & true).sum()), int((predicted | true).sum())
        sizes = int(predicted.sum()) + int(true.sum())
        jaccards.append(both / either if either else 1.0)
        dices.append(2 * both / sizes if sizes else 1.0)
    return np.array(jaccards), np.array(dices)


def reference(model, images, masks, frame):
    """The split's scores by definition: predictions on the (cropped) images, placed in the whole
    frame one image at a time where the images were trimmed, against that frame's truth."""
    predictions = predict_masks(model, images, CPU)
    if frame is not None:
        predictions = np.stack([mask_to_full_frame(p, CropBox.from_row(row), p.shape)
                                for p, row in zip(predictions, frame.crop_boxes)])
        masks = frame.masks
    return overlap_by_definition(predictions, masks)


def _square(size: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def test_scores_of_hand_made_masks():
    """Pixel counts worked by hand: (|P & T|, |P|, |T|) -> Jaccard, Dice."""
    empty = np.zeros((4, 4), np.uint8)
    predictions = np.stack([_square(4, 0, 0, 2, 2),  # 4 px, truth 4 px, 2 shared: 2/6, 4/8
                            empty,  # nothing there, nothing predicted: perfect
                            empty,  # 3 px missed entirely
                            _square(4, 1, 1, 3, 4),  # the truth itself (6 px)
                            _square(4, 0, 0, 1, 2),  # 2 px inside 8 px of truth: 2/8, 4/10
                            _square(4, 0, 0, 4, 4)])  # all 16 px over 1 px of truth: 1/16, 2/17
    truth = np.stack([_square(4, 0, 1, 2, 3), empty, _square(4, 3, 0, 4, 3), _square(4, 1, 1, 3, 4),
                      _square(4, 0, 0, 2, 4), _square(4, 2, 2, 3, 3)])
    expected_jaccard = [1 / 3, 1.0, 0.0, 1.0, 0.25, 1 / 16]
    expected_dice = [0.5, 1.0, 0.0, 1.0, 0.4, 2 / 17]
    scorer = SplitScorer(np.zeros((6, 4, 4), np.float32), truth, None, CPU)
    jaccards, dices = scorer.score(torch.from_numpy(predictions))
    np.testing.assert_allclose(jaccards, expected_jaccard, rtol=0, atol=1e-15)
    np.testing.assert_allclose(dices, expected_dice, rtol=0, atol=1e-15)
    np.testing.assert_allclose(overlap_by_definition(predictions, truth), [expected_jaccard, expected_dice],
                               rtol=0, atol=1e-15)


def test_a_trimmed_image_is_scored_in_its_whole_frame():
    """An 8 x 8 film cropped to its top half (rows 0-3): a prediction of all foreground on the crop
    lies on rows 0-3 of the frame; the truth's rows 0-5 (48 px) lose the 16 px the crop cut
    away: Jaccard 32/48, Dice 64/80. The untrimmed second image is scored as it is."""
    frame = FullFrame(masks=np.stack([_square(8, 0, 0, 6, 8), _square(8, 0, 0, 8, 4)]),
                      crop_boxes=np.array([CropBox(0, 0, 4, 8, 8, 8).as_row(), CropBox.full(8, 8).as_row()]))
    predictions = np.stack([np.ones((8, 8), np.uint8), _square(8, 0, 0, 8, 2)])  # second: 16 of the truth's 32 px
    scorer = SplitScorer(np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8), frame, CPU)
    jaccards, dices = scorer.score(torch.from_numpy(predictions))
    np.testing.assert_allclose(jaccards, [2 / 3, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(dices, [0.8, 2 / 3], rtol=0, atol=1e-15)


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
    from engine.runtime.device import as_batch
    from engine.runtime.prediction import foreground_masks, predict_foreground

    torch.manual_seed(0)
    model = build_segmenter("unet", width=0.125)
    images = np.random.default_rng(0).normal(size=(5, 32, 32)).astype(np.float32)
    device = torch.device("cpu")
    expected = predict_foreground(model, images, device) >= 0.5
    assert 0 < expected.mean() < 1  # both classes present: the comparison means something
    np.testing.assert_array_equal(foreground_masks(model, images, device), expected)
    np.testing.assert_array_equal(foreground_masks(model, as_batch(images, device), device), expected)
