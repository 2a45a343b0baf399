"""train_supervised on small arrays: what it writes, determinism, and resuming after a kill."""
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from engine.runtime.checkpoints import load_init_weights
from engine.supervised import train_supervised
from models.registry import build_segmenter, load_segmenter
from protocol.config import make_config
from protocol.results import IMAGES_SCHEMA


def smoke(**overrides):
    return make_config("smoke", overrides={"epochs": 2, "device": "cpu", "num_threads": 1, **overrides})


def test_run_directory_layout(tmp_path, ellipse_data):
    seen = []

    def callback(epoch, metrics, run_dir):
        last = run_dir / "checkpoints" / "last.pt"
        saved = torch.load(last, weights_only=False)["epoch"] if last.exists() else None
        seen.append((epoch, saved, "checkpoint_bytes" in metrics, (run_dir / "best.pt").exists(),
                     metrics["val_jaccard"]))

    result = train_supervised(smoke(), ellipse_data, tmp_path, callbacks=[callback])
    # Default policy (a checkpoint at most every checkpoint_every_s = 300 s, and after the last
    # epoch): a seconds-long run writes last.pt once, before the callback of its last epoch
    # sees it; best.pt only when the run ends.
    assert [s[:4] for s in seen] == [(1, None, False, False), (2, 2, True, False)]
    assert result.best_epoch == max(seen, key=lambda s: s[4])[0]
    assert result.val_jaccard == pytest.approx(max(s[4] for s in seen))

    images = pd.read_parquet(tmp_path / "images.parquet")
    assert list(images.columns) == IMAGES_SCHEMA.names
    assert list(images.image_id) == ellipse_data.test_ids
    assert images.jaccard.mean() == pytest.approx(result.test_jaccard_mean)
    assert images.dice.mean() == pytest.approx(result.test_dice_mean)
    assert (images.dice >= images.jaccard).all()

    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["best_epoch"] == result.best_epoch and summary["device"] == "cpu"
    assert summary["config"]["model"] == "unet" and summary["config"]["epochs"] == 2

    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == result.best_epoch and best["task"] == "lungs" and best["image_size"] == 64
    assert load_segmenter(tmp_path / "best.pt")(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)

    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 4
    assert Image.open(overlays[0]).mode == "RGB" and Image.open(overlays[0]).size == (64, 64)


def test_same_seed_same_metrics_other_seed_differs(tmp_path, ellipse_data):
    first = train_supervised(smoke(), ellipse_data, tmp_path / "a")
    second = train_supervised(smoke(), ellipse_data, tmp_path / "b")
    other = train_supervised(smoke(epochs=1, seed=1), ellipse_data, tmp_path / "c")
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "images.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "images.parquet").assign(trial_id="a"))
    assert first.history[0]["train_loss"] != other.history[0]["train_loss"]


# A child process that trains and SIGKILLs itself right after epoch `kill_after` is on disk.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from protocol.config import make_config
    from engine.data.segmentation import SegmentationData
    from engine.supervised import train_supervised

    arrays = np.load(sys.argv[1])
    data = SegmentationData(*(arrays[k] for k in ("xt", "yt", "xv", "yv", "xs", "ys")),
                            test_ids=[f"case{i:02d}" for i in range(len(arrays["xs"]))], task="lungs")
    cfg = make_config("smoke", overrides={"epochs": int(sys.argv[3]), "device": "cpu", "num_threads": 1,
                                          "augmentation": "robust", "checkpoint_every_s": 0})
    kill_after = int(sys.argv[4])

    def die(epoch, metrics, run_dir):
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    train_supervised(cfg, data, sys.argv[2], callbacks=[die])
""")


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, ellipse_data):
    d = ellipse_data
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, xt=d.train_images, yt=d.train_masks, xv=d.val_images, yv=d.val_masks, xs=d.test_images,
             ys=d.test_masks)
    killed_dir = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", CHILD, str(arrays), str(killed_dir), "3", "1"],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert torch.load(killed_dir / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (killed_dir / "result.json").exists()

    cfg = smoke(epochs=3, augmentation="robust", checkpoint_every_s=0)
    resumed = train_supervised(cfg, d, killed_dir)
    straight = train_supervised(cfg, d, tmp_path / "straight")
    assert resumed.epochs_trained == 2 and straight.epochs_trained == 3
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert [h["val_jaccard"] for h in resumed.history] == [h["val_jaccard"] for h in straight.history]
    assert (resumed.best_epoch, resumed.test_jaccard_mean, resumed.test_dice_mean) == \
        (straight.best_epoch, straight.test_jaccard_mean, straight.test_dice_mean)


def test_checkpoints_are_bounded_in_time_and_hold_what_a_resume_needs(tmp_path, ellipse_data):
    written = {}
    for every_s in (0, 3600):
        seen = []
        result = train_supervised(smoke(epochs=3, checkpoint_every_s=every_s), ellipse_data, tmp_path / str(every_s),
                                  callbacks=[lambda epoch, metrics, run_dir:
                                             seen.append(metrics.get("checkpoint_bytes"))])
        written[every_s] = seen
    # Every epoch at 0 s; at 3600 s only after the last epoch (seconds-long run).
    assert all(size and size > 0 for size in written[0])
    assert written[3600][:2] == [None, None] and written[3600][2] > 0
    run_dir = tmp_path / "3600"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last.pt"]
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 3 and {"optimizer", "rng", "history", "best"} <= set(last)
    best = torch.load(run_dir / "best.pt", weights_only=False)
    assert last["best"]["epoch"] == best["epoch"] == result.best_epoch
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last["best"]["state_dict"].items())
    assert written[3600][2] == (run_dir / "checkpoints" / "last.pt").stat().st_size


def test_checkpoint_clock_waits_its_interval():
    from engine.runtime.checkpoints import CheckpointClock

    clock = CheckpointClock(60)
    assert not clock.due(final=False) and clock.due(final=True)
    clock.since -= 61  # as if a minute had passed since the last write
    assert clock.due(final=False)
    assert CheckpointClock(0).due(final=False)


def test_best_weights_are_a_snapshot_and_last_pt_stores_them_once(tmp_path):
    """state_copy is a copy where the network lives (training on leaves it alone); save_atomic
    writes a CPU-only state as it is, and last.pt's network and its "best", when they are one
    epoch, as one set of tensors."""
    from torch import nn

    from engine.runtime.checkpoints import on_cpu, save_atomic, state_copy, with_best

    model = nn.Linear(64, 64)
    snapshot = state_copy(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(snapshot["weight"], model.weight)
    best = {"epoch": 2, "state_dict": snapshot}
    state = with_best(lambda: pytest.fail("the best epoch is this one: no second copy"), best, epoch=2)
    assert on_cpu(state) is state and state["state_dict"] is state["best"]["state_dict"]
    once = save_atomic(state, tmp_path / "once.pt").stat().st_size
    twice = save_atomic(with_best(lambda: {"epoch": 3, "state_dict": state_copy(model)}, best, epoch=3),
                        tmp_path / "twice.pt").stat().st_size
    assert twice - once > 0.9 * 64 * 64 * 4  # a second weight matrix
    loaded = torch.load(tmp_path / "once.pt", weights_only=True)
    assert torch.equal(loaded["best"]["state_dict"]["weight"], snapshot["weight"])


def test_best_weights_of_an_earlier_epoch_survive_a_crash_after_the_last_checkpoint(tmp_path, ellipse_data):
    # lr 0.01 makes epoch 1 better than epoch 2 on these ellipses (CPU runs are deterministic).
    cfg = smoke(epochs=2, lr=0.01, augmentation="affine")
    straight = train_supervised(cfg, ellipse_data, tmp_path / "straight")
    assert straight.best_epoch == 1

    def crash(epoch, metrics, run_dir):
        if epoch == 2:  # last.pt (with epoch 1's weights as "best") is on disk; best.pt is not
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_supervised(cfg, ellipse_data, tmp_path / "crashed", callbacks=[crash])
    assert not (tmp_path / "crashed" / "best.pt").exists()
    resumed = train_supervised(cfg, ellipse_data, tmp_path / "crashed")
    assert resumed.epochs_trained == 0 and resumed.best_epoch == 1
    assert (resumed.test_jaccard_mean, resumed.test_dice_mean) == (straight.test_jaccard_mean, straight.test_dice_mean)


def test_finished_run_is_not_retrained(tmp_path, ellipse_data):
    first = train_supervised(smoke(epochs=1), ellipse_data, tmp_path)
    again = train_supervised(smoke(epochs=1), ellipse_data, tmp_path)
    assert again.epochs_trained == 0
    assert again.test_jaccard_mean == first.test_jaccard_mean


def test_resume_refuses_another_config(tmp_path, ellipse_data):
    train_supervised(smoke(epochs=1), ellipse_data, tmp_path)
    with pytest.raises(ValueError, match=r"last\.pt: cannot resume.*lr"):
        train_supervised(smoke(epochs=1, lr=1e-3), ellipse_data, tmp_path)


def test_image_size_mismatch_is_reported(tmp_path, ellipse_data):
    with pytest.raises(ValueError, match="64 px.*128 px"):
        train_supervised(smoke(image_size=128), ellipse_data, tmp_path)


def test_init_weights_copy_matching_tensors(tmp_path, ellipse_data):
    train_supervised(smoke(epochs=1), ellipse_data, tmp_path / "source")
    source = torch.load(tmp_path / "source" / "best.pt", weights_only=False)["state_dict"]
    torch.manual_seed(5)
    # Four classes: every tensor but the classifier's matches by name and shape.
    model = build_segmenter("unet", width=0.125, num_classes=4)
    copied = load_init_weights(model, tmp_path / "source" / "best.pt")
    state = model.state_dict()
    assert copied == len(state) - 2
    torch.testing.assert_close(state["encoders.0.0.weight"], source["encoders.0.0.weight"])
    assert state["classifier.weight"].shape[0] == 4

    with pytest.raises(ValueError, match="best.pt: no tensor matches"):
        load_init_weights(build_segmenter("fcn", width=0.125), tmp_path / "source" / "best.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        train_supervised(smoke(init_weights=str(tmp_path / "nowhere.pt")), ellipse_data, tmp_path / "x")
