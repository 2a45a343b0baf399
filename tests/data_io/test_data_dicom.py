"""DICOM radiographs: written here with pydicom from phantom images, and prepared to the same
array and content crop as the PNG they came from (photometric interpretations, rescale, window,
bit depths, compression), or refused with the file and the reason."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLossless, RLELossless

from data_io.dicom import convert_folder, write_dicom
from data_io.phantoms import synthesize
from data_io.preprocess import preprocess_file
from data_io.readers import is_radiograph_file, radiograph_size, read_dicom, read_gray

SIZE = 32


def assert_prepared_alike(path: Path, png: Path, atol: float = 0.0) -> None:
    """The one pipeline (data_io.preprocess) gives the DICOM file the PNG's image and crop box."""
    dicom, picture = preprocess_file(path, SIZE), preprocess_file(png, SIZE)
    assert dicom.crop == picture.crop
    np.testing.assert_allclose(dicom.image, picture.image, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def phantom_pngs(tmp_path_factory) -> dict[str, Path]:
    """A 16-bit (12-bit values) Montgomery-like PNG and an 8-bit Shenzhen-like PNG."""
    folders = synthesize(tmp_path_factory.mktemp("ph"), n_source=1, n_target=1, n_shenzhen=1, source_size=32,
                         target_size=64, seed=3)
    return {"16": next((folders["montgomery"] / "CXR_png").glob("*.png")),
            "8": next((folders["shenzhen"] / "CXR_png").glob("*.png"))}


def dicom_by_hand(path: Path, stored: np.ndarray, photometric: str, bits: int, **elements) -> Path:
    """A minimal DX file through pydicom's own pixel setter (independent of data_io.dicom)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.Modality = "DX"
    ds.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("depth", ["16", "8"])
def test_both_photometric_interpretations_prepare_like_the_png(phantom_pngs, tmp_path, depth):
    png = phantom_pngs[depth]
    display = read_gray(png)
    bits = 12 if depth == "16" else 8
    top = 2 ** bits - 1
    mono2 = dicom_by_hand(tmp_path / "m2.dcm", display, "MONOCHROME2", bits)
    mono1 = dicom_by_hand(tmp_path / "m1.dcm", (top - display.astype(np.int64)).astype(display.dtype),
                          "MONOCHROME1", bits)
    for path in (mono2, mono1):
        crop = preprocess_file(path, SIZE).crop
        assert (crop.height, crop.width) == display.shape
        assert_prepared_alike(path, png)  # integer inversion: exactly the same array
    assert read_dicom(mono1).white_is_zero and not read_dicom(mono2).white_is_zero


def test_rescale_slope_and_intercept_are_applied(phantom_pngs, tmp_path):
    png = phantom_pngs["16"]
    display = read_gray(png).astype(np.int64)
    # stored * 0.5 - 100 = display
    stored = ((display + 100) * 2).astype(np.uint16)
    path = dicom_by_hand(tmp_path / "rescaled.dcm", stored, "MONOCHROME2", 16, RescaleSlope="0.5",
                         RescaleIntercept="-100")
    np.testing.assert_array_equal(read_dicom(path).pixels, display.astype(np.float32))
    assert_prepared_alike(path, png)


def test_a_window_is_applied_and_clips(phantom_pngs, tmp_path):
    png = phantom_pngs["16"]
    display = read_gray(png)
    low, high = int(display.min()), int(display.max())
    # A window spanning the image is a linear map: the standardised image is the PNG's.
    wide = dicom_by_hand(tmp_path / "wide.dcm", display, "MONOCHROME2", 12,
                         WindowCenter=str((low + high + 1) / 2), WindowWidth=str(high - low + 2))
    assert_prepared_alike(wide, png, atol=1e-4)
    # A narrow window clips: values outside it all display as the window's ends.
    center = int(np.median(display))
    narrow = dicom_by_hand(tmp_path / "narrow.dcm", display, "MONOCHROME2", 12, WindowCenter=str(center),
                           WindowWidth="64")
    shown = read_dicom(narrow).pixels
    assert shown.min() == 0 and shown.max() == 4095
    assert (shown[display < center - 40] == 0).all() and (shown[display > center + 40] == 4095).all()
    # MONOCHROME1 with a window: windowed first, then inverted over the window's output range.
    inverted = dicom_by_hand(tmp_path / "m1-wide.dcm", (4095 - display.astype(np.int64)).astype(np.uint16),
                             "MONOCHROME1", 12, WindowCenter=str(4095 - (low + high - 1) / 2),
                             WindowWidth=str(high - low + 2))
    assert_prepared_alike(inverted, png, atol=1e-4)


def test_rle_compression_decodes_and_a_missing_decoder_names_file_and_syntax(phantom_pngs, tmp_path):
    png = phantom_pngs["8"]
    display = read_gray(png)
    path = dicom_by_hand(tmp_path / "rle.dcm", display, "MONOCHROME2", 8)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    assert_prepared_alike(path, png)

    # JPEG Lossless needs pylibjpeg-libjpeg or gdcm, which the project does not install.
    lossless = dicom_by_hand(tmp_path / "jpeg-lossless.dcm", display, "MONOCHROME2", 8)
    ds = pydicom.dcmread(lossless)
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(lossless, enforce_file_format=True)
    with pytest.raises(ValueError) as error:
        preprocess_file(lossless, SIZE)
    message = str(error.value)
    assert message.startswith(str(lossless)) and "JPEG Lossless" in message and "no installed decoder" in message


def test_unreadable_and_unsuitable_files_name_the_file(phantom_pngs, tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\x07" * 40)
    truncated = tmp_path / "truncated.dcm"
    good = dicom_by_hand(tmp_path / "good.dcm", read_gray(phantom_pngs["8"]), "MONOCHROME2", 8)
    truncated.write_bytes(good.read_bytes()[:-500])
    colour = dicom_by_hand(tmp_path / "colour.dcm", np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    for path, reason in ((garbage, "DICOM"), (truncated, "DICOM"), (colour, "MONOCHROME")):
        with pytest.raises(ValueError, match=reason) as error:
            preprocess_file(path, SIZE)
        assert str(error.value).startswith(str(path))


def test_dicom_without_a_suffix_is_recognised(phantom_pngs, tmp_path):
    display = read_gray(phantom_pngs["8"])
    bare = dicom_by_hand(tmp_path / "1.2.840.99", display, "MONOCHROME2", 8)
    notes = tmp_path / "notes"
    notes.write_text("not an image")
    assert is_radiograph_file(bare) and not is_radiograph_file(notes)
    assert radiograph_size(bare) == display.shape
    assert_prepared_alike(bare, phantom_pngs["8"])


def test_the_project_writer_round_trips(phantom_pngs, tmp_path):
    """data_io.dicom (`cxrsweep data to-dicom`) against the reader: same arrays as the PNGs."""
    folder = phantom_pngs["16"].parent
    written = convert_folder(folder, tmp_path / "dicom", monochrome1_every=1).written
    assert [p.name for p in written] == [p.stem + ".dcm" for p in sorted(folder.glob("*.png"))]
    assert pydicom.dcmread(written[0]).PhotometricInterpretation == "MONOCHROME1"
    assert_prepared_alike(written[0], phantom_pngs["16"])
    display = read_gray(phantom_pngs["16"])
    rescaled = write_dicom(display, tmp_path / "r.dcm", rescale=(1.0, -1024.0), window=(2048, 4096),
                           bits_stored=16, compress="rle")
    assert_prepared_alike(rescaled, phantom_pngs["16"], atol=1e-4)


def test_a_padded_monochrome1_file_is_cropped_like_its_png(phantom_pngs, tmp_path):
    """Polarity comes before the content crop: black padding stored inverted (MONOCHROME1 keeps it
    as the brightest value) is found and trimmed as in the PNG."""
    display = np.pad(read_gray(phantom_pngs["16"]), ((0, 0), (20, 12)))  # black bands left and right
    png = tmp_path / "padded.png"
    Image.fromarray(display).save(png)
    mono1 = dicom_by_hand(tmp_path / "padded.dcm", (4095 - display.astype(np.int64)).astype(np.uint16),
                          "MONOCHROME1", 12)
    crop = preprocess_file(mono1, SIZE).crop
    assert (crop.left, crop.width - crop.right) == (20, 12)
    assert_prepared_alike(mono1, png)
