"""Writers of tiny datasets in the exact original on-disk formats, done by hand (numpy + Pillow),
independently of the phantom generator, so the readers are tested against the formats themselves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_io.phantoms import synthesize

STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")


def chest_masks(side: int, shift: int = 0) -> dict[str, np.ndarray]:
    """Boxy SCR-like masks at `side` px, patient's left lung on the image's RIGHT half."""
    masks = {name: np.zeros((side, side), dtype=bool) for name in STRUCTURES}
    q = side // 8
    masks["right lung"][2 * q : 7 * q, 1 * q + shift : 3 * q + shift] = True  # image left
    masks["left lung"][2 * q : 7 * q, 5 * q + shift : 7 * q + shift] = True  # image right
    masks["heart"][5 * q : 7 * q, 3 * q : 5 * q + q // 2] = True
    masks["right clavicle"][q : q + max(1, q // 2), q : 3 * q] = True
    masks["left clavicle"][q : q + max(1, q // 2), 5 * q : 7 * q] = True
    return masks


def stored_jsrt_pixels(masks_full: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """'White is zero' 12-bit pixels: lungs numerically HIGH, as in the real .IMG files."""
    side = masks_full["left lung"].shape[0]
    display = np.full((side, side), 2600.0) + rng.normal(0, 60, (side, side))
    lungs = masks_full["left lung"] | masks_full["right lung"]
    display[lungs] -= 1500
    return np.clip(4095 - display, 0, 4095).astype(np.uint16)


def write_gif_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="GIF")


@pytest.fixture
def write_jsrt(tmp_path):
    """Write a JSRT + SCR pair: `.IMG` files (big-endian) and SCR GIFs in the layout asked for."""

    def write(
        ids=("JPCLN001", "JPCLN002", "JPCNN001"),
        side=64,
        scr_layout="folds",
        structure_sep=" ",
        image_format="img",
        seed=0,
        root=None,
    ) -> tuple[Path, Path, dict[str, np.ndarray]]:
        root = Path(root or tmp_path)
        rng = np.random.default_rng(seed)
        jsrt_dir, scr_dir = root / "All247images", root / "scr"
        jsrt_dir.mkdir(parents=True, exist_ok=True)
        stored = {}
        for index, case_id in enumerate(ids):
            full = {k: np.kron(v, np.ones((2, 2), dtype=bool))
                    for k, v in chest_masks(side // 2, shift=index % 3).items()}
            pixels = stored_jsrt_pixels(full, rng)
            stored[case_id] = pixels
            if image_format == "img":
                pixels.astype(">u2").tofile(jsrt_dir / f"{case_id}.IMG")
            else:
                # Re-packaged variant: 8-bit display look behind an inverted palette.
                display = (255 - (pixels >> 4)).astype(np.uint8)
                palette_index = (255 - display).astype(np.uint8)
                indexed = Image.frombytes("P", (side, side), palette_index.tobytes())
                indexed.putpalette([level for index in range(256) for level in (255 - index,) * 3])
                stored[case_id] = display
                indexed.save(jsrt_dir / f"{case_id}{image_format}")
            for name, mask in chest_masks(side // 2, shift=index % 3).items():
                folder_name = name.replace(" ", structure_sep)
                if scr_layout == "folds":
                    folder = scr_dir / ("fold1" if index % 2 == 0 else "fold2") / "masks" / folder_name
                else:
                    folder = scr_dir / "masks" / folder_name
                write_gif_mask(mask, folder / f"{case_id}.gif")
        return jsrt_dir, scr_dir, stored

    return write


@pytest.fixture
def write_montgomery(tmp_path):
    """Write a Montgomery-style set: 16-bit PNGs holding 12-bit values, left/right or merged masks."""

    def write(ids=("MCUCXR_0001_0", "MCUCXR_0002_1"), shape=(80, 64), layout="left-right", root=None) -> Path:
        root = Path(root or tmp_path) / "MontgomerySet"
        rng = np.random.default_rng(1)
        for case_id in ids:
            height, width = shape
            image = rng.integers(500, 4000, size=shape).astype(np.uint16)
            left = np.zeros(shape, dtype=np.uint8)
            right = np.zeros(shape, dtype=np.uint8)
            right[height // 4 : 3 * height // 4, width // 8 : 3 * width // 8] = 255
            left[height // 4 : 3 * height // 4, 5 * width // 8 : 7 * width // 8] = 255
            (root / "CXR_png").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "CXR_png" / f"{case_id}.png")
            if layout == "left-right":
                for folder, mask in (("leftMask", left), ("rightMask", right)):
                    (root / "ManualMask" / folder).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(root / "ManualMask" / folder / f"{case_id}.png")
            else:
                # Merged and resized with interpolation: soft edges, maximum below 255.
                merged = ((left | right).astype(np.float32) * 0.8).astype(np.float32)
                merged[1:-1, 1:-1] = (merged[:-2, 1:-1] + merged[2:, 1:-1] + merged[1:-1, 1:-1]) / 3
                (root / "ManualMask").mkdir(parents=True, exist_ok=True)
                Image.fromarray((merged * 255).astype(np.uint8)).save(root / "ManualMask" / f"{case_id}.png")
        return root

    return write


@pytest.fixture(scope="session")
def phantom_dirs(tmp_path_factory) -> dict[str, Path]:
    """A small phantom set in every format, shared by the tests that only read it."""
    return synthesize(
        tmp_path_factory.mktemp("phantoms"), n_source=8, n_target=6, n_shenzhen=7, source_size=128, target_size=128,
        seed=3
    )
