"""Small phantom-like segmentation data for engine tests: bright ellipses in noise, 64 px."""
import numpy as np
import pytest

from engine.data.segmentation import SegmentationData

SIZE = 64


def ellipse_arrays(n: int, rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.12, 0.25, 2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image = mask + rng.normal(0, 0.6, (size, size))
        images.append(((image - image.mean()) / image.std()).astype(np.float32))
        masks.append(mask.astype(np.uint8))
    return np.stack(images), np.stack(masks)


@pytest.fixture(scope="session")
def ellipse_data() -> SegmentationData:
    rng = np.random.default_rng(7)
    train, val, test = (ellipse_arrays(n, rng) for n in (8, 4, 4))
    return SegmentationData(*train, *val, *test, test_ids=[f"case{i:02d}" for i in range(4)], task="lungs",
                            dataset="ellipses")
