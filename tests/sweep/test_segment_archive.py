"""The archive workflow end to end on a real Ray runtime: phantom radiographs converted to DICOM
(some MONOCHROME1) plus a corrupt file are an unlabelled --target-dir for the proposed method at
0 % labels; its checkpoint then segments the folder on Ray, twice; and the same images as PNG, through
the plain loop a job this small gets by itself, give the same masks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from commands.main import main
from protocol.results import read_segmentations

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_archive_workflow(ray_runtime, sweep_phantoms, tmp_path, capsys):
    pngs = Path(sweep_phantoms["montgomery"]) / "CXR_png"
    dicoms = tmp_path / "archive"
    assert main(["data", "to-dicom", str(pngs), str(dicoms), "--monochrome1-every", "2"]) == 0
    files = sorted(dicoms.glob("*.dcm"))
    photometric = [pydicom.dcmread(f, stop_before_pixels=True).PhotometricInterpretation for f in files]
    assert len(files) == len(list(pngs.glob("*.png"))) and {"MONOCHROME1", "MONOCHROME2"} == set(photometric)

    # A corrupt file among the DICOMs: training leaves it out (listed in the log), segmenting lists it.
    (dicoms / "corrupt.dcm").write_bytes(files[0].read_bytes()[:1000])

    # The proposed method on the unlabelled folder: warm-up + transfer, no labels, no scores.
    run = tmp_path / "run"
    assert main(["train-transfer", "--method", "proposed", "--label-fraction", "0", "--profile", "smoke",
                 "--target", "hospital", "--target-dir", str(dicoms), "--jsrt", sweep_phantoms["jsrt"],
                 "--scr", sweep_phantoms["scr"], "--cache-dir", sweep_phantoms["cache_dir"],
                 "--set", "num_threads=1", "--out", str(run)]) == 0
    assert "hospital has no lungs labels: overlays only" in capsys.readouterr().out
    summary = json.loads((run / "result.json").read_text())
    assert summary["n_test_images"] == 0 and math.isnan(summary["test_jaccard_mean"])
    assert summary["config"]["target"] == "hospital" and len(pd.read_parquet(run / "images.parquet")) == 0
    assert list((run / "overlays").glob("*.png")) and (run / "translations" / "b_to_a.png").is_file()
    checkpoint = torch.load(run / "best.pt", weights_only=False)
    low, high = checkpoint["train_foreground_range"]
    assert 0 < low < high < 1
    # Both records: what it was trained on (the folder target by its content) and how it was prepared.
    assert set(checkpoint["data"]) == {"jsrt", "hospital"} and checkpoint["preprocessing"]["crop_borders"]

    # Segment the folder on Ray (--ray: so small a job would run the plain loop by itself).
    out = tmp_path / "segmented"
    command = ["segment", str(run / "best.pt"), str(dicoms), "--out", str(out), "--batch-size", "4",
               "--progress-every", "0", "--ray"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"{len(files) + 1} image(s), 0 already done, {len(files) + 1} to do" in printed
    assert f"{len(files)} mask(s)" in printed and "1 unreadable" in printed
    assert f"unreadable: {dicoms / 'corrupt.dcm'}: " in printed
    rows = read_segmentations(out).set_index("path")
    assert len(rows) == len(files) + 1
    assert rows.loc[str(dicoms / "corrupt.dcm")].status == "unreadable"
    for dicom in files:
        row = rows.loc[str(dicom)]
        mask = np.asarray(Image.open(out / row["mask"]))
        assert row.status == "ok" and mask.shape == (row.height, row.width) == pydicom.dcmread(dicom).pixel_array.shape
        assert row.task == "lungs" and 0 <= row.area_fraction <= 1 and row.n_components >= 0
    content = rows[rows.status == "ok"]
    assert ((content.content_top > 0) | (content.content_left > 0)).any()  # the checkpoint's crop was applied

    # A second run does no work.
    written = {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    assert main(command) == 0
    assert f"{len(files) + 1} already done, 0 to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == written

    # The same images as PNG: the same masks.
    png_out = tmp_path / "segmented-png"
    assert main(["segment", str(run / "best.pt"), str(pngs), "--out", str(png_out), "--batch-size", "4"]) == 0
    assert "fewer than" in capsys.readouterr().out  # the plain loop, by itself
    for dicom in files:
        from_png = np.asarray(Image.open(png_out / "masks" / f"{dicom.stem}.png"))
        np.testing.assert_array_equal(from_png, np.asarray(Image.open(out / "masks" / f"{dicom.stem}.png")))


@pytest.mark.parametrize("staged", [True, False])
def test_both_ray_pipelines_give_the_local_masks(ray_runtime, sweep_phantoms, tmp_path, staged):
    """The staged pipeline (read tasks, network actors, encode tasks: what runs with GPUs) and
    the whole-job actors of a CPU-only cluster write what the plain loop writes, content crop
    included (the phantoms' collimation bands are trimmed)."""
    from engine.runtime.checkpoints import network_checkpoint, save_atomic
    from inference.inputs import list_inputs
    from inference.local import segment_local
    from inference.output import SegmentOutput
    from inference.stages import checkpoint_info
    from models.registry import build_segmenter
    from sweep.segment_ray import RayOptions, segment_with_ray

    torch.manual_seed(0)
    checkpoint = save_atomic(network_checkpoint(build_segmenter("unet", width=0.125), "unet", {"width": 0.125}, {},
                                                "lungs", 32, "per_image_standardisation", 1, crop_borders=True),
                             tmp_path / "best.pt")
    info = checkpoint_info(checkpoint)
    assert info.crop_borders
    items = list_inputs([Path(sweep_phantoms["montgomery"]) / "CXR_png"])
    outputs = {}
    for name in ("local", "ray"):
        outputs[name] = SegmentOutput(tmp_path / name, info, checkpoint)
    segment_local(items, outputs["local"], checkpoint, device="cpu", batch_size=3, overlays="all")
    segment_with_ray(items, outputs["ray"], checkpoint, RayOptions(batch_size=3, workers=2, staged=staged),
                     overlays="all")
    tables = {name: output.gather().drop(columns=["segmented_at"]).reset_index(drop=True)
              for name, output in outputs.items()}
    pd.testing.assert_frame_equal(tables["local"], tables["ray"])
    assert (tables["ray"].content_top > 0).any() or (tables["ray"].content_left > 0).any()
    for item in items:
        for folder in ("masks", "overlays"):
            assert (tmp_path / "local" / folder / item.mask_name).read_bytes() == \
                   (tmp_path / "ray" / folder / item.mask_name).read_bytes()
