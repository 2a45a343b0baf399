"""`cxrsweep segment`'s stages without Ray: inputs, masks placed in the full frame, statistics,
QC, the resumable output folder, and the plain loop (`--local`)."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from PIL import Image

from commands.main import main
from data_io.preprocess import CropBox
from engine.runtime.checkpoints import foreground_range, network_checkpoint, save_atomic
from inference.inputs import item_columns, list_inputs
from inference.output import SegmentOutput
from inference.stages import (
    CheckpointInfo,
    checkpoint_info,
    full_frame_mask,
    mask_statistics,
    quality_flags,
    read_batch,
)
from models.registry import build_segmenter
from protocol.results import SEGMENTATIONS_SCHEMA_VERSION, read_segmentations


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A smoke-size U-Net (random weights) whose checkpoint records a training area range and the content crop."""
    torch.manual_seed(0)
    model = build_segmenter("unet", width=0.125)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, :2] = 1  # 25 %
    masks[1, :4] = 1  # 50 %
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_atomic(network_checkpoint(model, "unet", {"width": 0.125}, {}, "lungs", 32, "per_image_standardisation", 1,
                                   crop_borders=True, train_foreground_range=foreground_range([masks])), path)
    return path


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory):
    from data_io.phantoms import synthesize

    return synthesize(tmp_path_factory.mktemp("ph"), n_source=1, n_target=4, source_size=32, target_size=48,
                      seed=5)["montgomery"] / "CXR_png"


def test_the_checkpoint_records_the_training_area_range(checkpoint):
    info = checkpoint_info(checkpoint)
    assert info.foreground_range == (0.25, 0.5) and info.task == "lungs" and info.image_size == 32
    assert info.crop_borders


def test_inputs_are_found_recursively_and_named_after_their_path(radiographs, tmp_path):
    root = tmp_path / "archive"
    (root / "patient1" / "study").mkdir(parents=True)
    (root / ".hidden").mkdir()
    pngs = sorted(radiographs.glob("*.png"))
    shutil.copy(pngs[0], root / "a.png")
    shutil.copy(pngs[1], root / "patient1" / "study" / "b.png")
    shutil.copy(pngs[2], root / ".hidden" / "c.png")
    (root / "readme.txt").write_text("not a radiograph")
    items = list_inputs([root, pngs[3]])
    assert [i.mask_name for i in items] == ["a.png", "patient1/study/b.png", pngs[3].name]
    assert all(i.file_bytes > 0 for i in items)
    # Two inputs whose masks would share a name are refused before any work.
    shutil.copy(pngs[1], root / "c.png")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(pngs[2], tmp_path / "elsewhere" / "c.png")
    with pytest.raises(ValueError, match="its mask would be masks/c.png"):
        list_inputs([root, tmp_path / "elsewhere" / "c.png"])


def test_the_mask_is_placed_at_the_crop_in_the_full_frame():
    """A prediction on the cropped 16 x 16 image lands on the crop's place in a 40 x 30 frame:
    a block over the left half of the crop covers the left half of the box, nothing outside it."""
    foreground = np.full((16, 16), 0.2, np.float32)
    foreground[:, :8] = 0.9
    crop = CropBox(top=4, left=6, bottom=36, right=26, height=40, width=30)
    mask, confidence = full_frame_mask(foreground, crop)
    assert mask.shape == (40, 30) and mask.dtype == np.uint8
    expected = np.zeros((40, 30), np.uint8)
    expected[4:36, 6:16] = 1
    np.testing.assert_array_equal(mask, expected)
    assert confidence == pytest.approx(0.9)
    assert np.isnan(full_frame_mask(np.zeros((16, 16), np.float32), crop)[1])


def test_statistics_and_quality_flags_on_hand_made_masks():
    mask = np.zeros((100, 100), np.uint8)
    mask[20:80, 10:40] = 1  # the patient's right lung: the image's left
    mask[20:80, 60:85] = 1  # the patient's left lung
    stats = mask_statistics(mask)
    assert stats["area_fraction"] == pytest.approx(0.33)
    assert stats["right_area_fraction"] == pytest.approx(0.18) and stats["left_area_fraction"] == pytest.approx(0.15)
    assert stats["n_components"] == 2 and stats["n_large_components"] == 2
    assert quality_flags(stats, (0.2, 0.5)) == []
    assert quality_flags(stats, (0.4, 0.5)) == ["area 33.00% outside the training range 40.00-50.00%"]
    mask[90:95, 90:95] = 1  # 0.25 %: a speck, not a large component
    mask[0:10, 45:55] = 1  # 1 %: a third large component
    stats = mask_statistics(mask)
    assert stats["n_components"] == 4 and stats["n_large_components"] == 3
    assert quality_flags(stats, None) == ["3 large components (more than 2)"]
    assert quality_flags(mask_statistics(np.zeros((10, 10), np.uint8)), (0.2, 0.5)) == ["nothing segmented"]


def test_an_out_folder_belongs_to_one_checkpoint(tmp_path):
    info = CheckpointInfo("a" * 64, "lungs", 32, "unet", None, crop_borders=True)
    SegmentOutput(tmp_path, info, tmp_path / "best.pt")
    SegmentOutput(tmp_path, info, tmp_path / "best.pt")  # the same checkpoint continues
    with pytest.raises(ValueError, match="another checkpoint"):
        SegmentOutput(tmp_path, CheckpointInfo("b" * 64, "lungs", 32, "unet", None, crop_borders=True),
                      tmp_path / "other.pt")


def test_only_files_that_cannot_be_decoded_are_unreadable(checkpoint, radiographs, tmp_path, monkeypatch):
    """(a) A file that cannot be decoded, or is no usable radiograph, gets its reason and no image;
    (b) a bug in the preprocessing is not taken for an unreadable file: it propagates."""
    import data_io.preprocess as preprocess
    from data_io.preprocess import UNREADABLE_ERRORS
    from data_io.readers import UnreadableImage

    assert not {ValueError, RuntimeError, MemoryError} & set(UNREADABLE_ERRORS)
    good = sorted(radiographs.glob("*.png"))[0]
    (tmp_path / "garbled.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "notes.dcm").write_text("not a DICOM file")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(tmp_path / "blank.png")
    paths = [good, tmp_path / "garbled.png", tmp_path / "notes.dcm", tmp_path / "blank.png"]
    info = checkpoint_info(checkpoint)
    read = read_batch(item_columns(list_inputs(paths)), info)
    errors = dict(zip((p.name for p in paths), read["error"]))
    assert errors[good.name] == "" and read["image"][0].std() > 0
    assert errors["garbled.png"].startswith("not a readable image (")
    assert errors["notes.dcm"].startswith("not a readable DICOM file")
    assert errors["blank.png"].startswith("the image is uniform")
    assert not read["image"][1:].any() and not read["crop"][1:].any()

    for bug in (RuntimeError, ValueError):
        def broken_standardise(image, source, bug=bug):
            raise bug(f"{source}: a bug in the standardisation")

        monkeypatch.setattr(preprocess, "standardise", broken_standardise)
        with pytest.raises(bug, match="a bug in the standardisation") as error:
            read_batch(item_columns(list_inputs([good])), info)
        assert not isinstance(error.value, UnreadableImage)
        assert any(entry.name == "broken_standardise" for entry in error.traceback)


def test_local_segment_lists_bad_files_resumes_and_redoes_changed_ones(checkpoint, radiographs, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(radiographs, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    command = ["segment", str(checkpoint), str(folder), "--out", str(out), "--local", "--device", "cpu",
               "--batch-size", "3", "--progress-every", "0"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "5 image(s), 0 already done, 5 to do" in printed and "1 unreadable" in printed
    assert "broken.png: not a readable image" in printed
    rows = read_segmentations(out).set_index("path")
    assert len(rows) == 5 and not list((out / ".parts").glob("*.parquet"))
    broken = rows.loc[str(folder / "broken.png")]
    assert broken.status == "unreadable" and pd.isna(broken["mask"]) and broken.qc_flag
    for png in sorted(radiographs.glob("*.png")):
        row = rows.loc[str(folder / png.name)]
        mask = np.asarray(Image.open(out / row["mask"]))
        assert row.status == "ok" and mask.shape == (row.height, row.width) == np.asarray(Image.open(png)).shape
        assert set(np.unique(mask)) <= {0, 255}
        top, left, bottom, right = (int(row[f"content_{side}"]) for side in ("top", "left", "bottom", "right"))
        content = mask[top:bottom, left:right]
        assert (content > 0).sum() == (mask > 0).sum()  # nothing outside the content box
        assert row.area_fraction == pytest.approx((content > 0).mean())
        assert 0.5 <= row.mean_confidence <= 1 or row.area_fraction == 0
        assert row.qc_flag == bool(row.qc_reason)

    # A second run does no work; a changed file is done again, and only it.
    written = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    assert main(command) == 0
    assert "0 to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == written
    changed = folder / sorted(radiographs.glob("*.png"))[0].name
    Image.fromarray(np.asarray(Image.open(changed))[::-1].copy()).save(changed)
    assert main(command) == 0
    assert "5 image(s), 4 already done, 1 to do" in capsys.readouterr().out
    assert len(read_segmentations(out)) == 5

    # A row of another schema version is not taken as done.
    import pyarrow.parquet as pq

    table = pq.read_table(out / "segmentations.parquet")
    versions = table.column("schema_version").to_pylist()
    versions[0] -= 1
    pq.write_table(table.set_column(table.schema.get_field_index("schema_version"), "schema_version",
                                    pa.array(versions, pa.int64())), out / "segmentations.parquet")
    assert main(command) == 0
    assert "5 image(s), 4 already done, 1 to do" in capsys.readouterr().out
    again = read_segmentations(out)
    assert len(again) == 5 and (again.schema_version == SEGMENTATIONS_SCHEMA_VERSION).all()


def test_segmentations_parquet_checks_its_own_schema_version(tmp_path):
    """segmentations.parquet carries the version of its own schema, apart from the sweep's tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from protocol.results import SEGMENTATIONS_SCHEMA, SEGMENTATIONS_SCHEMA_VERSION

    path = tmp_path / "segmentations.parquet"
    empty = pa.table({f.name: pa.array([], type=f.type) for f in SEGMENTATIONS_SCHEMA}, schema=SEGMENTATIONS_SCHEMA)
    pq.write_table(empty, path)
    assert len(read_segmentations(tmp_path)) == 0
    newer = str(SEGMENTATIONS_SCHEMA_VERSION + 1).encode()
    pq.write_table(empty.replace_schema_metadata({b"cxrsweep_schema_version": newer}), path)
    with pytest.raises(ValueError, match=f"segmentations.parquet: schema version .*reads version "
                                         f"{SEGMENTATIONS_SCHEMA_VERSION}"):
        read_segmentations(tmp_path)


def test_a_small_job_runs_the_plain_loop_by_itself_and_a_large_one_ray(checkpoint, radiographs, tmp_path, capsys,
                                                                         monkeypatch):
    """Without --ray / --local / --address, fewer than RAY_MIN_IMAGES images run the loop (saying so);
    as many or more run on Ray; the flags decide whatever the size."""
    import argparse

    import commands.train as cli_train
    import sweep.segment_ray as segment_ray

    def flags(**given):
        return argparse.Namespace(**{"local": False, "ray": False, "address": None, "gpus_per_worker": 0.0, **given})

    limit = cli_train.RAY_MIN_IMAGES
    assert not cli_train.use_ray(flags(), limit - 1) and "the plain loop" in capsys.readouterr().out
    assert cli_train.use_ray(flags(), limit)
    assert not cli_train.use_ray(flags(local=True), 10 * limit)
    assert cli_train.use_ray(flags(ray=True), 1) and cli_train.use_ray(flags(address="auto"), 1)
    assert cli_train.use_ray(flags(gpus_per_worker=0.5), 1)
    assert capsys.readouterr().out == ""  # only the loop chosen by size says so

    # The command: 4 images and a threshold of 4 take Ray (here a stand-in that records the call).
    calls = []
    monkeypatch.setattr(segment_ray, "segment_with_ray", lambda items, *a, **k: calls.append(len(items)))
    command = ["segment", str(checkpoint), str(radiographs), "--progress-every", "0"]
    monkeypatch.setattr(cli_train, "RAY_MIN_IMAGES", 5)
    assert main(command + ["--out", str(tmp_path / "small")]) == 0
    assert "4 image(s), fewer than 5: the plain loop" in capsys.readouterr().out and calls == []
    assert len(read_segmentations(tmp_path / "small")) == 4
    monkeypatch.setattr(cli_train, "RAY_MIN_IMAGES", 4)
    assert main(command + ["--out", str(tmp_path / "large")]) == 0
    assert calls == [4] and "plain loop" not in capsys.readouterr().out


def test_the_progress_bar_shows_the_rate_and_the_time_left():
    import io

    from inference.local import Progress

    stream = io.StringIO()
    progress = Progress(4, every_s=1e-6, stream=stream)
    progress.update([{"status": "ok", "qc_flag": True}, {"status": "unreadable", "qc_flag": True}])
    progress.update([{"status": "ok", "qc_flag": False}] * 2)
    progress.close()
    printed = stream.getvalue()
    assert re.search(r"segment: +\d+%\|.*\| 2/4 \[\d\d:\d\d<\d\d:\d\d", printed)  # bar, done/total, elapsed<ETA
    assert "1 unreadable, 1 flagged" in printed
    assert printed.rstrip().splitlines()[-1].startswith("segment: 4/4 image(s), 1 unreadable, 1 flagged")
