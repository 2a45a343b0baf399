"""Data the engine tests share: small phantom-like segmentation data (bright ellipses in noise,
64 px), and tiny two-domain transfer data with a tiny M_A.

Transfer source images show two dark "lungs" on a bright body; the target renders the same kind
of anatomy with an inverted, gamma-bent response, so a translator has something to learn.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_io.cache import CachedDataset
from engine.data.segmentation import PER_IMAGE_STANDARDISATION, SegmentationData
from engine.data.transfer import transfer_data
from engine.runtime.checkpoints import network_checkpoint, save_atomic
from models.registry import build_segmenter
from protocol.config import make_config

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


TRANSFER_SIZE = 32


def _standardise(images: np.ndarray) -> np.ndarray:
    mean = images.mean(axis=(1, 2), keepdims=True)
    std = images.std(axis=(1, 2), keepdims=True)
    return ((images - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def make_domain(name: str, n: int, seed: int, target_style: bool, with_heart: bool = True) -> CachedDataset:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:TRANSFER_SIZE, 0:TRANSFER_SIZE] / TRANSFER_SIZE
    images, lungs, hearts = [], [], []
    for _ in range(n):
        cx, cy, rx, ry = rng.uniform(0.22, 0.28), rng.uniform(0.45, 0.55), rng.uniform(0.1, 0.14), rng.uniform(0.2, 0.3)
        lung = ((((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1)
                | (((x - (1 - cx)) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1))
        heart = ((x - 0.5) / 0.12) ** 2 + ((y - 0.65) / 0.1) ** 2 < 1
        density = 0.8 - 0.6 * lung + 0.1 * heart + 0.05 * rng.standard_normal((TRANSFER_SIZE, TRANSFER_SIZE))
        density = np.clip(density, 0.0, 1.0)
        image = (1 - density) ** 2.5 if target_style else density
        images.append(image)
        lungs.append(lung)
        hearts.append(heart)
    masks = {"lungs": np.array(lungs, np.uint8)}
    if with_heart:
        masks["heart"] = np.array(hearts, np.uint8)
    return CachedDataset(name=name, ids=[f"{name}{i:03d}" for i in range(n)], images=_standardise(np.array(images)),
                         masks=masks, image_size=TRANSFER_SIZE, key=f"{name}-{seed}")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread and lose a lot to spinning on a shared box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def source() -> CachedDataset:
    return make_domain("jsrt", 10, seed=1, target_style=False)


@pytest.fixture(scope="session")
def target() -> CachedDataset:
    return make_domain("montgomery", 10, seed=2, target_style=True, with_heart=False)


def tiny_config(**changes):
    """Seconds-long transfer runs: 32 px, narrow networks, one epoch of each kind."""
    base = dict(image_size=TRANSFER_SIZE, width=0.125, translator_width=4, style_dim=2, batch_size=4, epochs=1,
                warmup_epochs=1, transfer_epochs=1, num_threads=1, device="cpu", experiment="transfer",
                method="proposed", label_fraction=0.0, task="lungs")
    return make_config("smoke", {**base, **changes})


@pytest.fixture
def make_cfg():
    return tiny_config


def save_m_a(path, source: CachedDataset, task: str = "lungs", **changes):
    """An M_A checkpoint in the engine's format, recording fold 0 of `source` (random weights: the
    tests check plumbing, not skill)."""
    torch.manual_seed(0)
    cfg = tiny_config(**changes)
    kwargs = {"width": cfg.width, "in_channels": 1, "num_classes": 2}
    model = build_segmenter("unet", **kwargs)
    return save_atomic(network_checkpoint(model, "unet", kwargs, cfg.to_dict(), task, TRANSFER_SIZE,
                                          PER_IMAGE_STANDARDISATION, 1, data={source.name: source.fingerprint}), path)


@pytest.fixture
def make_m_a():
    return save_m_a


@pytest.fixture(scope="session")
def segmenter_checkpoint(tmp_path_factory, source):
    return save_m_a(tmp_path_factory.mktemp("m_a") / "best.pt", source)


@pytest.fixture(scope="session")
def warmed_translator(tmp_path_factory, source, target):
    from engine.transfer.proposed.warmup import warmup_translator

    return warmup_translator(tiny_config(), source, target, tmp_path_factory.mktemp("translators"))


@pytest.fixture
def data_for(source, target):
    def build(cfg):
        return transfer_data(cfg, source, target)

    return build


@pytest.fixture(scope="session")
def mild_target() -> CachedDataset:
    """A target rendered like the source (no shift): M_A works on it as it is."""
    return make_domain("montgomery", 10, seed=3, target_style=False, with_heart=False)


@pytest.fixture(scope="session")
def trained_segmenter_checkpoint(tmp_path_factory, source):
    """An M_A that has learnt the tiny source (a few seconds of training): what the selection tests need,
    since a random M_A's masks are implausible with or without adaptation."""
    from engine.data.segmentation import segmentation_data
    from engine.supervised import train_supervised

    cfg = tiny_config(experiment="segmentation", method="supervised", label_fraction=None, epochs=40, batch_size=2,
                      lr=3e-3)
    run_dir = tmp_path_factory.mktemp("m_a_trained")
    train_supervised(cfg, segmentation_data(cfg, source), run_dir)
    return run_dir / "best.pt"
