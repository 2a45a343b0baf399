"""`cxrsweep segment` with the content crop: checkpoints record it, masks come back at each
input's size placed at its crop, and a padded copy of a film gets the same mask as the film, on
the plain loop (--local) and on Ray (--ray) alike."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from commands import main as cli
from data_io.phantoms import MildShift, synthesize
from data_io.readers import read_gray
from inference.inputs import item_columns, list_inputs
from inference.stages import checkpoint_info, read_batch
from models.registry import load_torch_file

# Zero bands (top, bottom, left, right) added to each unpadded film: on one side, on two, on all four.
PADDINGS = [(0, 0, 23, 0), (31, 0, 0, 0), (0, 17, 0, 40), (9, 12, 14, 6)]


@pytest.fixture(scope="module")
def lung_model(phantom_folders, tmp_path_factory):
    """A small lung U-Net, trained long enough to draw lung-shaped masks (seconds)."""
    out = tmp_path_factory.mktemp("lungs") / "unet-lungs"
    argv = ["train", "--model", "unet", "--task", "lungs", "--fold", "0", "--profile", "smoke",
            "--jsrt", str(phantom_folders["jsrt"]), "--scr", str(phantom_folders["scr"]), "--out", str(out),
            "--cache-dir", str(phantom_folders["cache"]), "--set", "epochs=6", "--set", "lr=0.003",
            "--set", "num_threads=1", "--set", "device=cpu"]
    assert cli.main(argv) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Mild-shift target films without padding (collimation bands, Montgomery's aspect ratio), and
    padded copies of them as separate files."""
    root = tmp_path_factory.mktemp("films")
    folders = synthesize(root / "ph", n_source=1, n_target=len(PADDINGS), source_size=64, target_size=160, seed=6,
                         target_shift=MildShift().neutral("padding"))
    plain = sorted((folders["montgomery"] / "CXR_png").glob("*.png"))
    padded_dir = root / "padded"
    padded_dir.mkdir()
    for path, (top, bottom, left, right) in zip(plain, PADDINGS):
        Image.fromarray(np.pad(read_gray(path), ((top, bottom), (left, right)))).save(padded_dir / path.name)
    return plain, padded_dir


@pytest.fixture(scope="module")
def ray_here():
    """A small local Ray runtime for the Ray variant (segment uses it rather than start its own)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_checkpoints_record_the_preprocessing(lung_model, phantom_folders, tmp_path):
    record = load_torch_file(lung_model)["preprocessing"]
    assert record["crop_borders"] is True and record["normalisation"] == "per_image_standardisation"
    assert checkpoint_info(lung_model).crop_borders
    out = tmp_path / "uncropped"
    assert cli.main(["train", "--model", "unet", "--task", "lungs", "--fold", "0", "--profile", "smoke",
                     "--jsrt", str(phantom_folders["jsrt"]), "--scr", str(phantom_folders["scr"]), "--out", str(out),
                     "--cache-dir", str(phantom_folders["cache"]), "--set", "epochs=1", "--set", "num_threads=1",
                     "--set", "crop_borders=false"]) == 0
    assert load_torch_file(out / "best.pt")["preprocessing"]["crop_borders"] is False
    assert not checkpoint_info(out / "best.pt").crop_borders


@pytest.mark.parametrize("path", ["local", "ray"])
def test_a_padded_copy_gets_the_same_mask_as_the_film(lung_model, films, tmp_path, request, path):
    """Masks of padded and unpadded copies agree after mapping back (J >= 0.98),
    on the plain loop and on Ray (each reader applies the checkpoint's crop)."""
    plain, padded_dir = films
    if path == "ray":
        request.getfixturevalue("ray_here")
    how = ["--local", "--device", "cpu"] if path == "local" else ["--ray", "--workers", "1"]
    assert cli.main(["segment", str(lung_model), *map(str, plain), "--out", str(tmp_path / "plain"), *how]) == 0
    assert cli.main(["segment", str(lung_model), str(padded_dir), "--out", str(tmp_path / "padded"), *how]) == 0
    for path, (top, bottom, left, right) in zip(plain, PADDINGS):
        film_mask = np.asarray(Image.open(tmp_path / "plain" / "masks" / path.name))
        padded_mask = np.asarray(Image.open(tmp_path / "padded" / "masks" / path.name))
        height, width = read_gray(path).shape
        assert film_mask.shape == (height, width)
        assert padded_mask.shape == (height + top + bottom, width + left + right)  # each input's own size
        assert 0.05 < (film_mask > 0).mean() < 0.6, path.name  # a real mask, so agreement means something
        inner = padded_mask[top:top + height, left:left + width]
        assert _jaccard(inner, film_mask) >= 0.98, path.name
        assert (inner > 0).sum() == (padded_mask > 0).sum()  # nothing painted on the padding


def test_without_the_crop_padding_changes_the_masks(lung_model, films, tmp_path):
    """The control: the same network, its record saying the crop was off, resizes whole images,
    and padded copies do not get the film's masks."""
    plain, padded_dir = films
    uncropped = load_torch_file(lung_model)
    uncropped["preprocessing"]["crop_borders"] = False
    torch.save(uncropped, tmp_path / "uncropped.pt")
    for name, inputs in (("plain", list(map(str, plain))), ("padded", [str(padded_dir)])):
        assert cli.main(["segment", str(tmp_path / "uncropped.pt"), *inputs, "--out", str(tmp_path / name),
                         "--local", "--device", "cpu", "--overlays", "none"]) == 0
    scores = []
    for path, (top, bottom, left, right) in zip(plain, PADDINGS):
        film_mask = np.asarray(Image.open(tmp_path / "plain" / "masks" / path.name))
        padded_mask = np.asarray(Image.open(tmp_path / "padded" / "masks" / path.name))
        scores.append(_jaccard(padded_mask[top:top + film_mask.shape[0], left:left + film_mask.shape[1]], film_mask))
    assert min(scores) < 0.95, scores


def test_a_checkpoint_without_the_record_resizes_whole_images(lung_model, films, tmp_path, caplog):
    legacy = load_torch_file(lung_model)
    del legacy["preprocessing"]
    torch.save(legacy, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="inference.stages"):
        info = checkpoint_info(tmp_path / "old.pt")
    assert not info.crop_borders
    assert "records no preprocessing" in caplog.text and "old.pt" in caplog.text
    padded = item_columns(list_inputs([films[1] / films[0][0].name]))
    height, width = read_gray(padded["path"][0]).shape
    whole = [0, 0, height, width, height, width]
    assert read_batch(padded, info)["crop"][0].tolist() == whole
    assert read_batch(padded, checkpoint_info(lung_model))["crop"][0].tolist() != whole  # the crop trims it
