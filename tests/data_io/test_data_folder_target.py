"""Any target set: a folder of radiographs (DICOM and pictures), with or without lung masks."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from commands.main import main
from data_io.cache import load_cache_file, load_target
from data_io.datasets import check_target_name, scan_folder_target, scan_target, target_dirs
from data_io.dicom import convert_folder
from data_io.phantoms import synthesize
from data_io.readers import UnreadableImage, read_mask


@pytest.fixture(scope="module")
def montgomery(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("ph"), n_source=1, n_target=5, source_size=32, target_size=48,
                      seed=4)["montgomery"]


@pytest.fixture
def archive(montgomery, tmp_path):
    """Unlabelled: three DICOM files (one MONOCHROME1), two PNGs, a note that is not an image."""
    folder = tmp_path / "archive"
    pngs = sorted((montgomery / "CXR_png").glob("*.png"))
    staging = tmp_path / "staging"
    staging.mkdir()
    for png in pngs[:3]:
        shutil.copy(png, staging)
    convert_folder(staging, folder, monochrome1_every=3)
    for png in pngs[3:]:
        shutil.copy(png, folder)
    (folder / "notes.txt").write_text("not a radiograph")
    return folder


def test_an_unlabelled_folder_is_a_target_without_tasks(archive, montgomery, tmp_path):
    scan = scan_target("hospital-a", archive)
    assert scan.mask_root is None and scan.mask_layout == "none" and scan.tasks == ()
    assert scan.image_format == "dicom+png" and len(scan.cases) == 5
    assert all(case.masks == {} for case in scan.cases)
    dataset = load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")
    assert dataset.masks == {} and dataset.images.shape == (5, 16, 16)
    again = load_cache_file(dataset.path)
    assert again.masks == {} and again.ids == dataset.ids
    # The DICOM and PNG copies of a Montgomery image prepare to the same array as the PNG itself.
    labelled = load_target("montgomery", montgomery, 16, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(dataset.images, labelled.images)


def test_an_archive_leaves_out_its_unreadable_images_and_lists_them(archive, montgomery, tmp_path, caplog):
    """A hospital archive has damaged files: training on it leaves them out, with the reason, as
    `cxrsweep segment` does. A known set's damaged file still stops the job, naming the file."""
    dicom = sorted(archive.glob("*.dcm"))[0]
    dicom.write_bytes(dicom.read_bytes()[:400])  # truncated in its pixel data
    (archive / "garbled.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level("WARNING", logger="data_io.cache"):
        dataset = load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")
    assert len(dataset) == 4 and dataset.images.shape == (4, 16, 16)
    assert dicom.stem not in dataset.ids and "garbled" not in dataset.ids
    left_out = {entry["id"]: entry["reason"] for entry in dataset.skipped}
    assert set(left_out) == {dicom.stem, "garbled"} and all(r.startswith("unreadable: ") for r in left_out.values())
    assert str(dicom) not in left_out[dicom.stem]  # the reason, not the file name again
    assert "DICOM" in left_out[dicom.stem] and left_out["garbled"].startswith("unreadable: not a readable image")
    assert "2 of 6 image(s) unreadable" in caplog.text and "garbled" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="data_io.cache"):
        cached = load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")  # a cache hit
    assert cached.ids == dataset.ids and cached.skipped == dataset.skipped
    assert "2 of 6 image(s) unreadable" in caplog.text  # said again on every load

    for readable in [p for p in archive.iterdir() if p.suffix in (".dcm", ".png") and p.stem not in left_out]:
        readable.write_bytes(b"damaged")
    with pytest.raises(ValueError, match="none of its 6 image"):
        load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")

    known = tmp_path / "montgomery"
    shutil.copytree(montgomery, known)
    broken = sorted((known / "CXR_png").glob("*.png"))[0]
    broken.write_bytes(b"damaged")
    with pytest.raises(ValueError, match=str(broken)):
        load_target("montgomery", known, 16, cache_dir=tmp_path / "cache")


def test_an_image_the_machine_could_not_read_is_tried_again(archive, tmp_path, monkeypatch, caplog):
    """Left out for a reason of the machine's (a decoder missing, memory), not of the file: the
    cache entry's key has not changed, yet the next load takes the image once it reads."""
    import data_io.cache as cache

    uniform = archive / "blank.png"
    Image.fromarray(np.full((48, 40), 128, np.uint8)).save(uniform)  # prepared, never segmentable
    flaky = sorted(archive.glob("*.png"))[0]
    decode = cache.decode_radiograph

    def no_decoder(path, *args):
        if path == flaky:
            raise UnreadableImage(f"{path}: no decoder installed for this file")
        return decode(path, *args)

    monkeypatch.setattr(cache, "decode_radiograph", no_decoder)
    first = load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")
    assert {entry["id"] for entry in first.skipped} == {flaky.stem, "blank"}
    assert "uniform" in {e["id"]: e["reason"] for e in first.skipped}["blank"]
    monkeypatch.setattr(cache, "decode_radiograph", decode)
    with caplog.at_level("INFO", logger="data_io.cache"):
        second = load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")
    assert f"{flaky} reads now" in caplog.text
    assert flaky.stem in second.ids and [entry["id"] for entry in second.skipped] == ["blank"]
    assert second.fingerprint != first.fingerprint and len(second) == len(first) + 1


@pytest.mark.parametrize("bug", [RuntimeError, ValueError, MemoryError])
def test_a_bug_in_the_preprocessing_stops_the_load_with_its_traceback(archive, tmp_path, monkeypatch, bug):
    """Only a file that cannot be decoded is left out: an error of the program's own making while
    preparing an archive's image (here the content crop) is not taken for an unreadable image."""
    import data_io.preprocess as preprocess

    def broken_crop(pixels, source):
        raise bug("a bug in the content crop")

    monkeypatch.setattr(preprocess, "find_content_box", broken_crop)
    with pytest.raises(bug, match="a bug in the content crop") as error:
        load_target("hospital-a", archive, 16, cache_dir=tmp_path / "cache")
    assert not isinstance(error.value, UnreadableImage)
    assert any(entry.name == "broken_crop" for entry in error.traceback)  # raised where it happened
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached without the image


def test_masks_in_the_folder_are_matched_by_name(montgomery, tmp_path):
    folder = tmp_path / "site"
    shutil.copytree(montgomery / "CXR_png", folder / "images")
    (folder / "masks").mkdir()
    for left in sorted((montgomery / "ManualMask" / "leftMask").glob("*.png")):
        merged = read_mask(left) | read_mask(left.parent.parent / "rightMask" / left.name)
        Image.fromarray(merged.astype(np.uint8) * 255).save(folder / "masks" / f"{left.stem}_mask.png")
    dataset = load_target("site", folder, 16, cache_dir=tmp_path / "cache")
    reference = load_target("montgomery", montgomery, 16, cache_dir=tmp_path / "cache")
    assert dataset.masks.keys() == {"lungs"}
    np.testing.assert_array_equal(dataset.masks["lungs"], reference.masks["lungs"])

    first = sorted((folder / "masks").glob("*.png"))[0]
    first.unlink()
    with pytest.raises(ValueError, match="image without its mask"):
        scan_folder_target("site", folder)


def test_bad_folders_and_names_are_refused(archive, tmp_path):
    shutil.copy(next(archive.glob("*.png")), archive / f"{next(archive.glob('*.dcm')).stem}.png")
    with pytest.raises(ValueError, match="two radiographs named"):
        scan_folder_target("site", archive)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no radiographs"):
        scan_folder_target("site", empty)
    for bad in ("Site A", "../x", "jsrt", ""):
        with pytest.raises(ValueError):
            check_target_name(bad)
    assert target_dirs(["a=/x", "/y"], "b") == {"a": "/x", "b": "/y"}
    with pytest.raises(ValueError, match="NAME=DIR"):
        target_dirs(["/y"])
    with pytest.raises(ValueError, match="two folders"):
        target_dirs(["a=/x", "a=/z"])


def test_data_check_reads_a_folder_target(archive, capsys):
    assert main(["data", "check", "--target", "site", "--target-dir", str(archive), "--decode"]) == 0
    printed = capsys.readouterr().out
    assert "site: 5 cases" in printed and "unlabelled" in printed
