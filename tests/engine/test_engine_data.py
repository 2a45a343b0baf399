"""segmentation_data: the cross-validation arrays of one fold and task, from the real cache."""
import numpy as np
import pytest

from data_io.cache import load_jsrt
from sweep.config import make_config
from sweep.engine.data import SegmentationData, segmentation_data


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
    with pytest.raises(ValueError, match="fold 7"):
        segmentation_data(make_config("smoke", fold=7), jsrt)
    empty = np.zeros((0, 64, 64), np.float32)
    with pytest.raises(ValueError, match="no validation images"):
        SegmentationData(jsrt.images, jsrt.masks["lungs"], empty, empty.astype(np.uint8), empty,
                         empty.astype(np.uint8), test_ids=[], task="lungs")
