"""Writing radiographs as DICOM: test material and `cxrsweep data to-dicom` (the readers are in
`data_io.readers`).

`write_dicom` stores a displayed image (bone bright, as a PNG holds it) so that reading it back
through the modality LUT, the VOI LUT and the photometric interpretation gives the same
picture: MONOCHROME1 stores the inverted values, a rescale stores `(value - intercept) / slope`,
a window is recorded for the reader to apply.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from errors import UserError

# Digital X-Ray Image Storage - For Presentation.
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def stored_bits(pixels: np.ndarray) -> int:
    """Bits Stored for a displayed image: 8 for 8-bit data, else 12 when it fits (Montgomery), else 16."""
    if pixels.dtype == np.uint8:
        return 8
    return 12 if int(pixels.max(initial=0)) < 4096 else 16


def write_dicom(pixels: np.ndarray, path: str | Path, *, monochrome1: bool = False, bits_stored: int | None = None,
                rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
                compress: str | None = None) -> Path:
    """Write a 2-D unsigned image as a single-frame DX DICOM file.

    `rescale` = (slope, intercept): the file stores `(pixels - intercept) / slope`, which must be
    whole numbers in range. `window` = (center, width) is recorded as the VOI window. `compress`:
    None (explicit VR little endian) or "rle" (RLE Lossless, pydicom's own encoder).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype.kind not in "ui":
        raise ValueError(f"{path}: write_dicom takes a 2-D integer image, got {pixels.dtype} {pixels.shape}")
    bits = bits_stored or stored_bits(pixels)
    values = pixels.astype(np.float64)
    if rescale is not None:
        slope, intercept = rescale
        values = (values - intercept) / slope
        if not np.allclose(values, np.round(values)):
            raise ValueError(f"{path}: rescale {rescale} does not give whole stored values")
        values = np.round(values)
    top = 2 ** bits - 1
    if values.min() < 0 or values.max() > top:
        raise ValueError(f"{path}: values {values.min():g}..{values.max():g} do not fit {bits} stored bits")
    if monochrome1:
        values = top - values
    allocated = 8 if bits <= 8 else 16
    stored = values.astype(np.uint8 if allocated == 8 else np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[path.name, str(stored.shape)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[path.name, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[path.name, "series"])
    ds.Modality = "DX"
    ds.PatientID = path.stem
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits, bits - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{window[0]:g}", f"{window[1]:g}")
    ds.PixelData = stored.tobytes()
    if compress == "rle":
        ds.compress(RLELossless)
    elif compress is not None:
        raise ValueError(f"compress={compress!r}: use None or 'rle'")
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


class Converted(NamedTuple):
    """What `convert_folder` wrote: every file, and those of them stored as MONOCHROME1."""
    written: list[Path]
    monochrome1: list[Path]


def convert_folder(source: str | Path, out: str | Path, monochrome1_every: int = 0) -> Converted:
    """Every picture radiograph of `source` (PNG, ...) as OUT/<id>.dcm; every Nth one (1st, N+1th, ...)
    stored as MONOCHROME1 when `monochrome1_every` is N > 0."""
    from data_io.datasets import radiograph_files
    from data_io.preprocess import decode_radiograph
    from data_io.readers import PICTURE_SUFFIXES, radiograph_id

    source = Path(source)
    files = [p for p in radiograph_files(source) if p.suffix.lower() in PICTURE_SUFFIXES]
    if not files:
        raise UserError(f"{source}: no picture files ({', '.join(PICTURE_SUFFIXES)}) to convert")
    converted = Converted([], [])
    for index, path in enumerate(files):
        pixels = decode_radiograph(path).pixels  # a picture: its gray levels as stored
        flip = monochrome1_every > 0 and index % monochrome1_every == 0
        dicom = write_dicom(pixels, Path(out) / f"{radiograph_id(path)}.dcm", monochrome1=flip)
        converted.written.append(dicom)
        if flip:
            converted.monochrome1.append(dicom)
    return converted
