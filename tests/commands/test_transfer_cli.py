"""`cxrsweep train-transfer` end to end on phantom folders written in the real formats."""
import json

import pandas as pd
import pytest

from commands.main import main


@pytest.fixture(scope="module")
def phantom_folders(tmp_path_factory):
    from data_io.phantoms import synthesize

    return synthesize(tmp_path_factory.mktemp("phantoms"), n_source=10, n_target=10, source_size=64, target_size=64,
                      seed=5)


def command(folders, out, cache, *extra):
    return ["train-transfer", "--profile", "smoke", "--set", "image_size=32", "--set", "translator_width=4",
            "--set", "num_threads=1", "--jsrt", str(folders["jsrt"]), "--scr", str(folders["scr"]),
            "--montgomery", str(folders["montgomery"]), "--cache-dir", str(cache), "--out", str(out), *extra]


def test_train_transfer_trains_m_a_on_demand_and_writes_a_run(phantom_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(phantom_folders, out, tmp_path / "cache", "--method", "proposed")) == 0
    printed = capsys.readouterr().out
    assert "proposed lungs jsrt -> montgomery at 0 % labels" in printed
    assert (out / "m_a" / "best.pt").is_file()
    assert len(list((tmp_path / "cache" / "translators").glob("translator-munit-*.pt"))) == 1
    for name in ("best.pt", "images.parquet", "result.json", "translations/a_to_b.png", "translations/b_to_a.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "result.json").read_text())
    assert summary["config"]["label_fraction"] == 0.0
    assert set(pd.read_parquet(out / "images.parquet")["method"]) == {"proposed"}
    # What the run kept is printed, as result.json records it.
    kept = "kept no adaptation" if summary["selected_model"] == "no_adaptation" else "kept the adapted epoch"
    assert kept in printed


def test_train_transfer_reports_a_not_applicable_cell_without_training(phantom_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(phantom_folders, out, tmp_path / "cache", "--method", "finetune")) == 0
    assert "not applicable" in capsys.readouterr().out
    assert not (out / "m_a").exists()


def test_train_transfer_names_the_missing_target_folder(phantom_folders, tmp_path, capsys):
    args = command(phantom_folders, tmp_path / "run", tmp_path / "cache", "--target", "shenzhen")
    assert main(args) == 2
    assert "--shenzhen DIR" in capsys.readouterr().err
