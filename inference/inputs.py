"""The inputs of `cxrsweep segment`: the radiographs named by files and folders (`list_inputs`),
each an `ImageItem` (its path, where its mask goes, its size and modification time), and the
batches of columns that the stages (`inference.stages`) take (`batches`, `item_columns`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from errors import MissingInput, UserError


@dataclass(frozen=True)
class ImageItem:
    """One input file and where its mask goes (relative to OUT/masks/)."""

    path: str
    mask_name: str
    file_bytes: int
    mtime_ns: int


def list_inputs(inputs: Sequence[str | Path]) -> list[ImageItem]:
    """Radiographs named by files and folders (folders searched recursively, sorted).

    A folder's radiographs are the files `data_io.readers.is_radiograph_file` accepts (known
    suffixes, or DICOM by its marker); a named file must be one. Masks are named after the path
    inside the folder given (`a/b/c.dcm` -> `a/b/c.png`); two inputs that would share a mask
    are refused.
    """
    from data_io.overlays import safe_name
    from data_io.readers import is_radiograph_file, radiograph_id

    found: list[tuple[Path, Path]] = []  # (file, its name relative to the input)
    for given in map(Path, inputs):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(given).parts)
                           and is_radiograph_file(p))
            if not files:
                raise MissingInput(f"{given}: no radiographs (DICOM, PNG, JPEG, TIFF, BMP, GIF, JSRT .IMG) "
                                   "in this folder or below")
            found += [(p, p.relative_to(given)) for p in files]
        elif given.is_file():
            if not is_radiograph_file(given):
                raise UserError(f"{given}: unsupported file type; expected a radiograph (DICOM, PNG, JPEG, TIFF, "
                                "BMP, GIF or JSRT .IMG)")
            found.append((given, Path(given.name)))
        else:
            raise MissingInput(f"{given}: no such file or folder")
    items, owners = [], {}
    for path, relative in found:
        parts = [safe_name(part) for part in relative.parent.parts] + [safe_name(radiograph_id(relative)) + ".png"]
        mask_name = "/".join(parts)
        absolute = os.path.abspath(path)
        if mask_name in owners and owners[mask_name] != absolute:
            raise UserError(f"{path}: its mask would be masks/{mask_name}, like that of {owners[mask_name]}; "
                            "segment them into different --out folders")
        if mask_name in owners:
            continue  # the same file named twice
        owners[mask_name] = absolute
        try:
            stat = os.stat(absolute)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1  # read_batch reports why
        items.append(ImageItem(absolute, mask_name, size, mtime))
    return items


def batches(items: Sequence[ImageItem], size: int) -> Iterator[list[ImageItem]]:
    """`items` in consecutive batches of `size` (the last one shorter), as both runners feed them."""
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def item_columns(items: Sequence[ImageItem]) -> dict[str, np.ndarray]:
    """A batch of items as columns (what the read stage takes)."""
    return {
        "path": np.array([i.path for i in items], dtype=object),
        "mask_name": np.array([i.mask_name for i in items], dtype=object),
        "file_bytes": np.array([i.file_bytes for i in items], dtype=np.int64),
        "mtime_ns": np.array([i.mtime_ns for i in items], dtype=np.int64),
    }
