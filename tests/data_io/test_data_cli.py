"""`cxrsweep data synth` then `cxrsweep data check --json`, through the real command dispatcher."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from commands.main import main


def test_synth_then_check_reports_the_counts(tmp_path, capsys):
    out = tmp_path / "ph"
    argv = ["data", "synth", str(out), "--n-source", "6", "--n-target", "4", "--n-shenzhen", "7"]
    assert main(argv + ["--source-size", "96", "--target-size", "96", "--seed", "5"]) == 0
    assert {p.name for p in out.iterdir()} == {"jsrt", "scr", "montgomery", "shenzhen"}
    capsys.readouterr()
    check = ["data", "check", "--jsrt", str(out / "jsrt"), "--scr", str(out / "scr"),
             "--montgomery", str(out / "montgomery")]
    assert main(check + ["--shenzhen", str(out / "shenzhen"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"jsrt", "montgomery", "shenzhen"}
    assert report["jsrt"]["cases"] == 6 and report["jsrt"]["skipped"] == []
    assert report["jsrt"]["masks"] == {s: 6 for s in ("left lung", "right lung", "heart", "left clavicle",
                                                      "right clavicle")}
    assert report["jsrt"]["image_sizes"] == {"96x96": 6}
    assert report["montgomery"]["cases"] == 4 and report["montgomery"]["masks"] == {"left lung": 4, "right lung": 4}
    shenzhen = report["shenzhen"]
    assert shenzhen["cases"] + len(shenzhen["skipped"]) == 7 and len(shenzhen["skipped"]) >= 1
    assert shenzhen["masks"] == {"lungs": shenzhen["cases"]}


def test_check_of_a_broken_dataset_exits_non_zero(phantom_dirs, tmp_path, capsys):
    # Copy the Montgomery phantom and drop one mask: an image without its mask.
    broken = shutil.copytree(phantom_dirs["montgomery"], tmp_path / "montgomery")
    victim = sorted((broken / "ManualMask" / "rightMask").glob("*.png"))[0]
    victim.unlink()
    assert main(["data", "check", "--montgomery", str(broken), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert victim.name in report["montgomery"]["error"] and "without its mask" in report["montgomery"]["error"]
    assert main(["data", "check", "--montgomery", str(broken)]) == 1
    assert "BROKEN" in capsys.readouterr().err


def test_jsrt_needs_scr(phantom_dirs, capsys):
    assert main(["data", "check", "--jsrt", str(phantom_dirs["jsrt"])]) == 2
    assert "--scr" in capsys.readouterr().err


def test_console_script_text_summary(phantom_dirs):
    # The installed entry point, as a user runs it.
    result = subprocess.run(
        [sys.executable, "-m", "commands.main", "data", "check", "--jsrt", str(phantom_dirs["jsrt"].parent),
         "--scr", str(phantom_dirs["scr"])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "jsrt: 8 cases" in result.stdout


def test_decode_catches_pixels_damaged_after_the_header(phantom_dirs, tmp_path, capsys):
    copy = shutil.copytree(phantom_dirs["montgomery"], tmp_path / "montgomery")
    damaged = sorted((copy / "CXR_png").glob("*.png"))[-1]
    damaged.write_bytes(damaged.read_bytes()[:80])
    assert main(["data", "check", "--montgomery", str(copy), "--json"]) == 0  # headers alone look fine
    capsys.readouterr()
    assert main(["data", "check", "--montgomery", str(copy), "--json", "--decode"]) == 1
    assert damaged.name in json.loads(capsys.readouterr().out)["montgomery"]["error"]


def test_synth_target_shift_mild_writes_square_padded_films(tmp_path, capsys):
    from data_io.readers import image_size

    out = tmp_path / "ph"
    assert main(["data", "synth", str(out), "--n-source", "1", "--n-target", "3", "--source-size", "64",
                 "--target-size", "80", "--target-shift", "mild"]) == 0
    assert {image_size(p) for p in (out / "montgomery" / "CXR_png").glob("*.png")} == {(80, 80)}
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "x"), "--n-source", "1", "--n-target", "1", "--target-shift", "mild",
                 "--target-inverted-fraction", "0.5"]) == 2
    assert "severe target only" in capsys.readouterr().err
