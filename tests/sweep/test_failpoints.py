"""The failpoint registry without a Ray runtime: empty unless armed, which trials its rules reach,
and what its callbacks do in a trial (fail a counted number of times, hold a bounded time)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from protocol.config import make_config
from protocol.grid import build_grid
from protocol.store import RunStore
from sweep import failpoints as fp


def _trials():
    return list(build_grid("segmentation", make_config("smoke"), models=["unet", "fcn"], tasks=["lungs"],
                           folds=[0, 1]).trials.values())


def test_an_unarmed_registry_adds_nothing_to_any_trial(failpoints):
    assert failpoints.trial_entries(_trials()) == {}
    assert failpoints.segment_exit_marker is None


def test_the_first_matching_rule_of_each_kind_applies(failpoints):
    trials = _trials()
    unet0 = next(t.trial_id for t in trials if "unet" in t.trial_id and "fold0" in t.trial_id)
    failpoints.fail(unet0, times=1, at_epoch=2)
    failpoints.fail("*-unet-*", times=-1)
    failpoints.hold("*-fold1-*", epoch=3)
    entries = failpoints.trial_entries(trials)
    assert entries[unet0] == {"inject_failure": {"times": 1, "at_epoch": 2}}
    for trial in trials:
        if trial.trial_id == unet0:
            continue
        expected = {}
        if "-unet-" in trial.trial_id:
            expected["inject_failure"] = {"times": -1, "at_epoch": 1}
        if "-fold1-" in trial.trial_id:
            expected["hold_at_epoch"] = 3
        assert entries.get(trial.trial_id, {}) == expected, trial.trial_id
    failpoints.clear()
    assert failpoints.trial_entries(trials) == {}


@pytest.mark.parametrize("arm", [lambda f: f.fail("*", times=-2), lambda f: f.fail("*", times=1, at_epoch=0),
                                 lambda f: f.hold("*", epoch=0)])
def test_meaningless_rules_are_refused(arm, failpoints):
    with pytest.raises(ValueError):
        arm(failpoints)
    assert failpoints.trial_entries(_trials()) == {}


def test_a_failure_is_raised_as_often_as_armed_and_counted_in_out(tmp_path):
    store = RunStore(str(tmp_path))
    (hook,) = fp.failure_callbacks({"inject_failure": {"times": 2, "at_epoch": 1}}, store, "t", resumed=False)
    hook(0, {}, tmp_path)  # another epoch: nothing
    for n in (1, 2):
        with pytest.raises(fp.InjectedFailure, match=f"injected failure {n} of 2 at epoch 1"):
            hook(1, {}, tmp_path)
    hook(1, {}, tmp_path)  # used up
    assert sorted(p.name for p in (tmp_path / "ray" / "injected-failures").iterdir()) == ["t.1", "t.2"]
    # A resumed attempt starts past the failing epoch: it fails at once while it still must.
    with pytest.raises(fp.InjectedFailure, match="injected failure 1 of always"):
        fp.failure_callbacks({"inject_failure": {"times": -1, "at_epoch": 1}}, store, "u", resumed=True)


def test_a_hold_marks_the_trial_gives_up_after_its_limit_and_lets_a_resumed_trial_go_on(tmp_path):
    store = RunStore(str(tmp_path))
    assert fp.hold_callbacks({}, store, "t") == []
    hold = fp._HoldHook(store, "t", at_epoch=2, limit_s=0.2)
    hold(1, {}, tmp_path)  # not its epoch
    assert not (tmp_path / "ray" / "held" / "t").exists()
    with pytest.raises(fp.HoldExpired, match="not killed within 0.2 s"):
        hold(2, {}, tmp_path)
    assert (tmp_path / "ray" / "held" / "t").is_file()
    fp._HoldHook(store, "t", at_epoch=2, limit_s=60)(2, {}, tmp_path)  # the mark is there: goes on at once


def test_a_segment_worker_exits_once_after_its_second_batch(tmp_path):
    marker = tmp_path / "exited"
    fp.after_segment_batch(5, None)  # not armed
    fp.after_segment_batch(1, str(marker))  # first batch
    assert not marker.exists()
    script = "import sys; from sweep.failpoints import after_segment_batch; after_segment_batch(2, sys.argv[1])"
    repo = str(Path(__file__).resolve().parents[2])
    first = subprocess.run([sys.executable, "-c", script, str(marker)], cwd=repo, timeout=60)
    assert first.returncode == 1 and marker.exists()
    again = subprocess.run([sys.executable, "-c", script, str(marker)], cwd=repo, timeout=60)
    assert again.returncode == 0
