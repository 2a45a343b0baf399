"""The sweep with a folder target (`--targets NAME --target-dir NAME=DIR`): an unlabelled set of
DICOM files gives finished transfer trials without numbers, never made-up scores."""
from __future__ import annotations

import math

import pydicom
import pytest

from protocol.config import make_config
from protocol.grid import build_grid
from protocol.results import read_images, read_trials
from sweep.inputs import DataPaths, check_data_flags, needed_datasets


def test_a_folder_target_joins_the_grid_by_name(tmp_path):
    grid = build_grid("transfer", make_config("smoke"), methods=["proposed"], fractions=[0], repetitions=[0],
                      tasks=["lungs"], targets=["hospital-a"])
    assert {t.config.target for t in grid.trials.values() if t.config.experiment == "transfer"} == {"hospital-a"}
    assert needed_datasets(grid.runnable()) == {"jsrt", "hospital-a"}
    with pytest.raises(ValueError, match="--target-dir hospital-a=DIR required"):
        check_data_flags({"jsrt", "hospital-a"}, DataPaths(jsrt="j", scr="s"))
    check_data_flags({"jsrt", "hospital-a"}, DataPaths(jsrt="j", scr="s", target_dirs={"hospital-a": "d"}))
    with pytest.raises(ValueError, match="target name"):
        build_grid("transfer", make_config("smoke"), targets=["Hospital A"])


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_on_an_unlabelled_dicom_folder(ray_runtime, sweep_phantoms, tmp_path, capsys):
    from commands.main import main
    from data_io.dicom import convert_folder

    dicoms = tmp_path / "dicom"
    convert_folder(f"{sweep_phantoms['montgomery']}/CXR_png", dicoms, monochrome1_every=2)
    out = tmp_path / "out"
    assert main(["run", "transfer", "--profile", "smoke", "--set", "num_threads=1", "--tasks", "lungs",
                 "--methods", "proposed,source_only", "--fractions", "0", "--repetitions", "0",
                 "--targets", "hospital", "--target-dir", str(dicoms), "--jsrt", sweep_phantoms["jsrt"],
                 "--scr", sweep_phantoms["scr"], "--cache-dir", sweep_phantoms["cache_dir"], "--out", str(out),
                 "--progress-every", "5"]) == 0
    trials = read_trials(out)
    transfer = trials[trials.experiment == "transfer"]
    assert sorted(transfer.method) == ["proposed", "source_only"] and set(transfer.target) == {"hospital"}
    assert (transfer.status == "ok").all() and (transfer.n_test_images == 0).all()
    assert all(math.isnan(v) for v in transfer.test_jaccard_mean)
    images = read_images(out)
    assert images[images.target == "hospital"].empty
    for trial_id in transfer.trial_id:
        assert list((out / "runs" / trial_id / "overlays").glob("*.png"))


def test_a_folder_target_has_a_content_identity(sweep_phantoms, tmp_path):
    """Trial identity for a folder target: the loader fingerprints it with the grid's
    crop setting, the transfer trials carry that fingerprint, and other content gives another."""
    from data_io.dicom import convert_folder
    from sweep.inputs import load_datasets

    dicoms = tmp_path / "dicom"
    convert_folder(f"{sweep_phantoms['montgomery']}/CXR_png", dicoms, monochrome1_every=2)
    paths = DataPaths(jsrt=sweep_phantoms["jsrt"], scr=sweep_phantoms["scr"], cache_dir=sweep_phantoms["cache_dir"],
                      target_dirs={"hospital": str(dicoms)})
    fingerprints = {crop: load_datasets({"hospital"}, paths, 32, crop_borders=crop)["hospital"].fingerprint
                    for crop in (True, False)}
    assert fingerprints[True] != fingerprints[False]  # the phantoms' collimation bands are trimmed
    grid = build_grid("transfer", make_config("smoke"), methods=["proposed"], fractions=[0], repetitions=[0],
                      tasks=["lungs"], targets=["hospital"]).with_data({"jsrt": "j" * 16,
                                                                        "hospital": fingerprints[True]})
    transfer = [t for t in grid.runnable() if t.config.target == "hospital"]
    assert transfer and all("hospital" in t.datasets and dict(t.data)["hospital"] == fingerprints[True]
                            for t in transfer)
    # The same folder with one image changed is other data.
    first = sorted(dicoms.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.PixelData = ds.pixel_array[::-1].copy().tobytes()
    ds.save_as(first)
    assert load_datasets({"hospital"}, paths, 32, crop_borders=True)["hospital"].fingerprint != fingerprints[True]
