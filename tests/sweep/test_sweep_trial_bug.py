"""A ValueError raised by a bug inside a trial is a failed trial, not bad input: the sweep exits 1,
the trial's traceback is in OUT/logs/ray.log, and with -v on the console too."""
from __future__ import annotations

import pytest

from sweep.failpoints import InjectedFailure

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.parametrize("verbose", [False, True])
def test_a_value_error_inside_a_trial_keeps_its_traceback(verbose, ray_runtime, data_flags, tmp_path, failpoints,
                                                          capsys):
    from commands.main import main

    assert issubclass(InjectedFailure, ValueError)
    failpoints.fail("segmentation-*", times=-1, at_epoch=1)
    command = ["run", "segmentation", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet",
               "--tasks", "lungs", "--folds", "0", "--retries", "0", "--out", str(tmp_path), *data_flags]
    assert main([*command, *(["-v"] if verbose else [])]) == 1  # a failed trial, not exit 2 (bad input)
    captured = capsys.readouterr()
    assert "FAILED segmentation-unet-lungs-fold0-smoke-" in captured.out and "InjectedFailure" in captured.out
    ray_log = (tmp_path / "logs" / "ray.log").read_text()
    assert "Trial task failed" in ray_log and "Traceback (most recent call last)" in ray_log
    assert "in maybe_fail" in ray_log and "sweep.failpoints.InjectedFailure: injected failure 1" in ray_log
    assert ("in maybe_fail" in captured.err) == verbose, captured.err[-2000:]
