"""The benchmarks run against the engines' current API (they import no private name, and a
changed signature fails here instead of on the next GPU machine)."""
import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_transfer_times_the_three_steps(monkeypatch, capsys):
    bench = _load("bench_transfer")
    monkeypatch.setattr(sys, "argv", ["bench_transfer.py", "--profile", "smoke", "--image-size", "64", "--steps", "1",
                                      "--set", "num_threads=1"])
    bench.main()
    printed = capsys.readouterr().out
    for step in ("discriminative", "generative", "supervised", "all three steps"):
        assert step in printed and "s/epoch" in printed, printed


def test_bench_fused_times_both_fused_steps():
    bench = _load("bench_fused")
    for model in ("unet", "proposed"):
        for grouped in (True, False):
            figures = bench.fused_rate("smoke", model, 2, 2, 1, grouped)
            assert figures["images_per_s"] > 0 and figures["host_peak_mb"] > 0, (model, figures)
