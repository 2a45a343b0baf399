"""Transfer runs on content-cropped targets: validation and test are scored in each image's
whole frame, and the checkpoint records the target's preprocessing."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from data_io.cache import CachedDataset
from engine.data.segmentation import score_per_image
from engine.data.transfer import transfer_data
from engine.runtime.prediction import predict_masks
from engine.transfer.dispatch import train_transfer
from models.registry import load_segmenter, load_torch_file


@pytest.fixture(scope="module")
def cropped_target(target) -> CachedDataset:
    """The target as if its films had been trimmed: every crop box covers rows 2-29 and columns
    3-31 of its 32 px frame, and the whole-frame truth differs from the cropped truth."""
    size = target.image_size
    boxes = np.tile(np.array([2, 3, 30, 32, size, size], np.int32), (len(target.ids), 1))
    whole = {"lungs": np.roll(target.masks["lungs"], 2, axis=1)}
    return dataclasses.replace(target, full_masks=whole, crop_boxes=boxes, key=target.key + "-cropped")


@pytest.mark.parametrize("method,fraction", [("source_only", 0.0), ("finetune", 50.0)])
def test_target_scores_are_computed_in_the_whole_frame(method, fraction, make_cfg, source, cropped_target,
                                                       segmenter_checkpoint, tmp_path):
    # The paper's label budget validates on the labelled target validation split, whose frames are checked here.
    cfg = make_cfg(method=method, label_fraction=fraction, label_budget="paper")
    data = transfer_data(cfg, source, cropped_target)
    assert data.target_test_frame is not None and data.target_val_frame is not None
    assert data.source_val_frame is None  # the source had nothing trimmed
    result = train_transfer(cfg, data, tmp_path / "run", segmenter_checkpoint)
    model = load_segmenter(tmp_path / "run" / "best.pt")
    predictions = predict_masks(model, data.target_test_images, torch.device("cpu"))
    expected = score_per_image(predictions, data.target_test_masks, data.target_test_frame)[0]
    recorded = pd.read_parquet(tmp_path / "run" / "images.parquet").jaccard.to_numpy()
    np.testing.assert_allclose(recorded, expected, rtol=1e-6)
    assert not np.allclose(recorded, score_per_image(predictions, data.target_test_masks)[0])
    if method == "finetune":  # validated on the labelled target: in the whole frame too
        val = predict_masks(model, data.target_val_images, torch.device("cpu"))
        assert np.isclose(result.val_jaccard,
                          score_per_image(val, data.target_val_masks, data.target_val_frame)[0].mean())
    record = load_torch_file(tmp_path / "run" / "best.pt")["preprocessing"]
    assert record["crop_borders"] is True


def test_a_target_cached_without_the_crop_is_refused_under_the_default(make_cfg, source, target):
    uncropped = dataclasses.replace(target, crop_borders=False)
    with pytest.raises(ValueError, match="montgomery: cached with crop_borders=false"):
        transfer_data(make_cfg(method="source_only"), source, uncropped)
    data = transfer_data(make_cfg(method="source_only", crop_borders=False),
                         dataclasses.replace(source, crop_borders=False), uncropped)
    assert data.target_test_frame is None and not data.crop_borders
