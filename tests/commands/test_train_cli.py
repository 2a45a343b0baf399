"""`cxrsweep train` on phantom files, then `cxrsweep segment` with its checkpoint."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from commands import main as cli
from data_io.readers import read_jsrt_img


@pytest.fixture(scope="module")
def trained_run(phantom_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "unet-heart"
    argv = ["train", "--model", "unet", "--task", "heart", "--fold", "1", "--profile", "smoke",
            "--jsrt", str(phantom_folders["jsrt"]), "--scr", str(phantom_folders["scr"]), "--out", str(out),
            "--cache-dir", str(phantom_folders["cache"]), "--set", "epochs=2", "--set", "num_threads=1"]
    assert cli.main(argv) == 0
    return out


def test_train_writes_the_run(trained_run, capsys):
    summary = json.loads((trained_run / "result.json").read_text())
    assert summary["config"]["task"] == "heart" and summary["config"]["fold"] == 1
    assert summary["config"]["profile"] == "smoke" and summary["config"]["epochs"] == 2
    images = pd.read_parquet(trained_run / "images.parquet")
    assert len(images) == 2 and set(images.task) == {"heart"} and set(images.fold) == {1}
    assert (trained_run / "best.pt").is_file() and list((trained_run / "overlays").glob("*.png"))


def test_train_writes_its_history_one_row_per_epoch(trained_run):
    history = pd.read_csv(trained_run / "history.csv")
    summary = json.loads((trained_run / "result.json").read_text())
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "train_s", "train_images_per_s", "val_jaccard", "val_dice", "best_val_jaccard",
            "best_epoch", "epoch_s"} <= set(history.columns)
    best = history.set_index("epoch").loc[summary["best_epoch"]]
    assert best["val_jaccard"] == pytest.approx(summary["val_jaccard"])  # the kept epoch's score, as result.json says
    assert history["val_jaccard"].max() == pytest.approx(history["best_val_jaccard"].iloc[-1])
    # last.pt after the last epoch only (checkpoint_every_s 300 s): its figures on that row, empty on the other
    assert history["checkpoint_bytes"].isna().tolist() == [True, False]


def test_segment_writes_masks_at_the_input_size(trained_run, phantom_folders, tmp_path, capsys):
    jsrt_file = sorted(phantom_folders["jsrt"].glob("*.IMG"))[0]
    png = tmp_path / "inputs" / "radiograph.png"
    png.parent.mkdir()
    pixels = read_jsrt_img(jsrt_file)
    Image.fromarray((pixels >> 4).astype(np.uint8)).resize((100, 120)).save(png)

    out = tmp_path / "seg"
    assert cli.main(["segment", str(trained_run / "best.pt"), str(jsrt_file), str(png.parent), "--out", str(out),
                     "--local", "--device", "cpu", "--overlays", "all"]) == 0
    printed = capsys.readouterr().out
    assert "2 image(s), 0 already done, 2 to do" in printed and "2 mask(s)" in printed
    mask = np.asarray(Image.open(out / "masks" / f"{jsrt_file.stem}.png"))
    assert mask.shape == pixels.shape and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "masks" / "radiograph.png")).shape == (120, 100)
    assert Image.open(out / "overlays" / "radiograph.png").size == (100, 120)


def test_bad_inputs_name_the_file(trained_run, tmp_path, capsys):
    missing = tmp_path / "nothing.png"
    assert cli.main(["segment", str(trained_run / "best.pt"), str(missing), "--out", str(tmp_path)]) == 2
    assert "nothing.png" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    assert cli.main(["segment", str(trained_run / "best.pt"), str(notes), "--out", str(tmp_path)]) == 2
    assert "notes.txt: unsupported file type" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no radiographs here")
    assert cli.main(["segment", str(trained_run / "best.pt"), str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty: no radiographs" in capsys.readouterr().err
    assert cli.main(["segment", str(notes), str(trained_run / "overlays"), "--out", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err


def test_train_resume_with_other_settings_is_refused(trained_run, phantom_folders, capsys):
    argv = ["train", "--model", "unet", "--task", "heart", "--fold", "1", "--profile", "smoke",
            "--jsrt", str(phantom_folders["jsrt"]), "--scr", str(phantom_folders["scr"]), "--out", str(trained_run),
            "--cache-dir", str(phantom_folders["cache"]), "--set", "epochs=2", "--set", "lr=0.01"]
    assert cli.main(argv) == 2
    assert "cannot resume" in capsys.readouterr().err
