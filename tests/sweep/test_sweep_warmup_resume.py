"""The translator warm-up trial resumes like any training trial."""
from __future__ import annotations

import pytest

from commands.main import main
from protocol.results import read_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_an_interrupted_translator_warm_up_resumes_from_its_checkpoint(ray_runtime, data_flags, tmp_path, capsys,
                                                                      failpoints):
    """The warm-up trial reports its epochs with checkpoints like any training trial: failed after
    epoch 2 of 3, `--resume` trains only epoch 3 and the proposed run that waited for it finishes."""
    out = tmp_path / "out"
    command = ["run", "transfer", "--profile", "smoke", "--set", "num_threads=1", "--set", "warmup_epochs=3",
               "--tasks", "lungs", "--methods", "proposed", "--fractions", "0", "--repetitions", "0",
               "--retries", "0", "--progress-every", "5", *data_flags, "--out", str(out)]
    failpoints.fail("warmup-*", times=1, at_epoch=2)
    assert main([*command, "--checkpoint-every-s", "0"]) == 1
    failpoints.clear()
    capsys.readouterr()

    assert main([*command, "--resume"]) == 0
    assert "resuming Ray Tune experiment" in capsys.readouterr().out
    log = (out / "logs" / "ray.log").read_text()
    assert "warm-up in" in log and "from epoch 2" in log, "the warm-up started again from epoch 0"
    # Epochs 1 and 2 by the first attempt, epoch 3 alone by the resumed one.
    assert [log.count(f"warm-up epoch {epoch}/3") for epoch in (1, 2, 3)] == [1, 1, 1]
    trials = read_trials(out)
    assert (trials.status == "ok").all() and "proposed" in set(trials.method)
