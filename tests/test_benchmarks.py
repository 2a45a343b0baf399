"""The benchmarks run against the engines' current API (they import no private name, and a
changed signature fails here instead of on the next GPU machine)."""
import importlib.util
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.loading import TranslateThenSegment
from protocol.config import make_config

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_transfer_times_the_three_steps(monkeypatch, capsys):
    """Its lines have the documented shape (a header, one line per step, the total), an epoch is
    ceil(148 JSRT training images / batch) steps, and the figures agree with each other."""
    bench = _load("bench_transfer")
    monkeypatch.setattr(sys, "argv", ["bench_transfer.py", "--profile", "smoke", "--image-size", "64", "--steps", "1",
                                      "--set", "num_threads=1"])
    bench.main()
    header, *steps, total = capsys.readouterr().out.strip().splitlines()
    batch = make_config("smoke", ["num_threads=1"], image_size=64).batch_size
    per_epoch = math.ceil(148 / batch)
    assert header.startswith("device cpu") and f"profile smoke, 64 px, batch {batch}," in header, header
    assert header.endswith(f"; {per_epoch} steps per epoch"), header
    step_line = re.compile(r"(.+?) +(\d+\.\d{3}) s/step +(\d+\.\d) s/epoch")
    parsed = [step_line.fullmatch(line) for line in steps]
    assert all(parsed) and len(parsed) == 3, steps
    assert [m[1] for m in parsed] == ["discriminative", "generative", "supervised (A->B->A + labelled B)"]
    epochs = []
    for m in parsed:
        per_step, per_epoch_s = float(m[2]), float(m[3])
        assert per_step > 0
        # Both printed rounded: s/step to 0.0005, s/epoch to 0.05.
        assert abs(per_epoch_s - per_step * per_epoch) <= 0.0005 * per_epoch + 0.05, m[0]
        epochs.append(per_epoch_s)
    total_line = re.fullmatch(r"all three steps +(\d+\.\d) s/epoch", total)
    assert total_line, total
    assert abs(float(total_line[1]) - sum(epochs)) <= 4 * 0.05 + 1e-9, (total, epochs)


def test_bench_fused_times_both_fused_steps():
    """The figures of K = 2 fused trials of 2 images each: the rate is K x images over the epoch's
    seconds, the device peak is reported exactly when there is a GPU, and the host peak is at
    least what the process holds now."""
    bench = _load("bench_fused")
    k, n = 2, 2
    for model in ("unet", "proposed"):
        for grouped in (True, False):
            figures = bench.fused_rate("smoke", model, k, n, 1, grouped)
            assert set(figures) == {"images_per_s", "epoch_s", "host_peak_mb", "device_peak_mb"}
            assert figures["epoch_s"] > 0
            assert figures["images_per_s"] == pytest.approx(k * n / figures["epoch_s"], rel=1e-12), (model, figures)
            assert (figures["device_peak_mb"] is None) == (not bench.GPU)
            statm = Path("/proc/self/statm")
            if statm.exists():
                resident_mb = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                assert figures["host_peak_mb"] >= resident_mb * 0.99, (model, figures, resident_mb)


def test_study_translation_measures_how_far_masks_move():
    """The translation study's mask figures: a mask shifted by 3 rows and 4 columns has its
    centroid 5 pixels away, and the masks come from the model's argmax, foreground = class 1."""
    study = _load("study_translation")
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 8:16, 6:12] = True
    shifted = np.roll(mask, (3, 4), axis=(1, 2))
    assert np.linalg.norm(study.centroids(mask) - study.centroids(shifted), axis=1) == pytest.approx([5.0])

    class Threshold(torch.nn.Module):
        def forward(self, images):
            return torch.cat([torch.zeros_like(images), images - 0.5], 1)

    images = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    got = study.lung_masks(TranslateThenSegment(Threshold()), images)
    assert got.dtype == bool and np.array_equal(got, images > 0.5)
