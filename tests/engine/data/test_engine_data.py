"""segmentation_data: the cross-validation arrays of one fold and task, from the real cache."""
import numpy as np
import pytest
import torch

from data_io.cache import load_jsrt
from engine.data.segmentation import SegmentationData, segmentation_data
from protocol.config import make_config


@pytest.fixture(scope="module")
def jsrt(phantom_folders):
    return load_jsrt(phantom_folders["jsrt"], phantom_folders["scr"], 64, cache_dir=phantom_folders["cache"])


@pytest.mark.parametrize("task", ["lungs", "heart", "clavicles"])
def test_folds_partition_the_dataset(jsrt, task):
    tested = []
    for fold in range(5):
        data = segmentation_data(make_config("smoke", task=task, fold=fold), jsrt)
        ids = data.train_ids + data.val_ids + data.test_ids
        assert sorted(ids) == sorted(jsrt.ids)  # train, second validation and test are disjoint
        assert len(data.train_ids) == 6 and len(data.val_ids) == 2
        index = [jsrt.ids.index(i) for i in data.test_ids]
        np.testing.assert_array_equal(data.test_masks, jsrt.masks[task][index])
        np.testing.assert_array_equal(data.test_images, jsrt.images[index])
        tested += data.test_ids
    assert sorted(tested) == sorted(jsrt.ids)  # every image is tested exactly once


def test_validation_fold_is_the_next_test_fold(jsrt):
    fold0 = segmentation_data(make_config("smoke", fold=0), jsrt)
    fold1 = segmentation_data(make_config("smoke", fold=1), jsrt)
    assert fold0.val_ids == fold1.test_ids


def test_mismatches_are_reported(jsrt):
    with pytest.raises(ValueError, match="cached at 64 px.*128 px"):
        segmentation_data(make_config("cpu"), jsrt)
    with pytest.raises(ValueError, match="fold must be < n_folds \\(5\\), got 7"):
        make_config("smoke", fold=7)  # refused where the config is built, before any data is read
    empty = np.zeros((0, 64, 64), np.float32)
    with pytest.raises(ValueError, match="no validation images"):
        SegmentationData(jsrt.images, jsrt.masks["lungs"], empty, empty.astype(np.uint8), empty,
                         empty.astype(np.uint8), test_ids=[], task="lungs")


def test_a_cache_made_with_another_crop_setting_is_refused(jsrt):
    with pytest.raises(ValueError, match="cached with crop_borders=true but the config asks for crop_borders=false"):
        segmentation_data(make_config("smoke", {"crop_borders": False}), jsrt)


def test_scores_are_computed_in_the_whole_frame():
    """A prediction perfect in the cropped frame still misses the lung a bad crop cut away."""
    from data_io.preprocess import CropBox, resize_mask
    from engine.data.segmentation import FullFrame, score_per_image

    whole = np.zeros((64, 64), np.uint8)
    whole[16:48, 8:56] = 1
    good, bad = CropBox(0, 0, 64, 64, 64, 64), CropBox(0, 32, 64, 64, 64, 64)  # bad: left half cut away
    predictions = np.stack([whole, resize_mask(whole, 64, bad.region_in(whole.shape)).astype(np.uint8)])
    frame = FullFrame(masks=np.stack([whole, whole]), crop_boxes=np.array([good.as_row(), bad.as_row()]))
    jaccards, dices = score_per_image(predictions, predictions, frame)
    assert jaccards[0] == 1.0 and abs(jaccards[1] - 0.5) < 0.03 and dices[1] < 0.7
    # Without the frame, each prediction matches its cropped truth perfectly: the crop would hide the error.
    assert (score_per_image(predictions, predictions)[0] == 1.0).all()


def test_a_supervised_run_scores_validation_and_test_in_the_whole_frame(ellipse_data, tmp_path):
    """The engine routes both scores through the frame: with whole-frame truth that differs
    from the cropped truth, the recorded numbers follow the whole frame."""
    import dataclasses

    import pandas as pd

    from engine.data.segmentation import FullFrame, score_per_image
    from engine.runtime.prediction import predict_masks
    from engine.supervised import train_supervised
    from models.registry import load_segmenter

    size = ellipse_data.image_size
    box = np.array([4, 8, 60, 56, size, size])  # the content crop covered rows 4-59, columns 8-55

    def frame(masks: np.ndarray) -> FullFrame:
        shifted = np.roll(masks, 3, axis=2)  # whole-frame truth: not what the cropped masks say
        return FullFrame(masks=shifted, crop_boxes=np.tile(box, (len(masks), 1)))

    data = dataclasses.replace(ellipse_data, crop_borders=True, val_frame=frame(ellipse_data.val_masks),
                               test_frame=frame(ellipse_data.test_masks))
    cfg = make_config("smoke", {"image_size": size, "epochs": 1, "num_threads": 1, "device": "cpu"})
    result = train_supervised(cfg, data, tmp_path / "run")
    model = load_segmenter(tmp_path / "run" / "best.pt")
    for images, masks, part_frame, recorded in [
            (data.val_images, data.val_masks, data.val_frame, result.val_jaccard),
            (data.test_images, data.test_masks, data.test_frame,
             pd.read_parquet(tmp_path / "run" / "images.parquet").jaccard.mean())]:
        predictions = predict_masks(model, images, torch.device("cpu"))
        expected = score_per_image(predictions, masks, part_frame)[0].mean()
        assert np.isclose(recorded, expected)
        assert not np.isclose(recorded, score_per_image(predictions, masks)[0].mean())
