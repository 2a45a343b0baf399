"""Four phantom radiographs with their lung masks, through the real writers, readers and cache."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def four_phantoms(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    from data_io.cache import load_jsrt
    from data_io.phantoms import synthesize

    root = tmp_path_factory.mktemp("phantoms")
    folders = synthesize(root / "data", n_source=4, n_target=0, source_size=128, seed=3)
    dataset = load_jsrt(folders["jsrt"], folders["scr"], image_size=64, cache_dir=root / "cache")
    return dataset.images, dataset.masks["lungs"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks gain nothing from a second thread, and on a shared machine a busy-waiting
    OpenMP thread can slow a step a hundredfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
