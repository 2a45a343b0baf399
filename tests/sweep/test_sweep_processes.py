"""The sweep as separate processes: a killed driver resumed with --resume, and a real
two-node Ray cluster on loopback whose trials land on both nodes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.results import read_images, read_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cxrsweep(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _env(ray_tmp: str) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)
    env.pop("CXRSWEEP_INJECT_FAILURE", None)
    return env


def _wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_driver_resumes_without_duplicates(data_flags, ray_temp_dirs, tmp_path):
    out = tmp_path / "out"
    epochs = 30
    run = ["run", "segmentation", "--profile", "smoke", "--set", f"epochs={epochs}", "--set", "num_threads=1",
           "--models", "unet", "--tasks", "lungs", "--folds", "0,1,2", "--out", str(out), "--progress-every", "2",
           *data_flags]
    driver = _cxrsweep(run, _env(ray_temp_dirs()), start_new_session=True)

    def finished() -> set[str]:
        return {p.parent.name for p in (out / "runs").glob("*/trial.json")}

    def checkpointed_unfinished() -> set[str]:
        return {p.parent.name for p in (out / "ray").glob("stage1-*/*/checkpoint_*")} - finished()

    # The state is read inside the wait and kept: Tune rotates checkpoints (num_to_keep=1), so a
    # glob taken after the kill can land between two checkpoints and see none.
    seen: dict[str, set[str]] = {}

    def one_done_one_checkpointed() -> bool:
        seen["done"], seen["checkpointed"] = finished(), checkpointed_unfinished()
        return bool(seen["done"] and seen["checkpointed"])

    try:
        _wait_for(one_done_one_checkpointed, 240, "one trial done and one checkpointed", driver)
        # Tune records trial checkpoints in its experiment state every TUNE_GLOBAL_CHECKPOINT_S
        # (2 s, sweep/runner.py): a checkpoint younger than that is not yet resumable.
        time.sleep(3)
        _wait_for(one_done_one_checkpointed, 60, "a checkpointed trial still running", driver)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and what it started in its session
        driver.wait()
    done_before = finished()
    interrupted = seen["checkpointed"] - done_before
    assert interrupted and done_before

    resumed = _cxrsweep([*run, "--resume"], _env(ray_temp_dirs()))
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "resuming Ray Tune experiment" in log
    trials, images = read_trials(out), read_images(out)
    assert len(trials) == 3 and trials.trial_id.is_unique and (trials.status == "ok").all()
    assert len(images) == trials.n_test_images.sum() and not images.duplicated(["trial_id", "image_id"]).any()
    for trial_id in interrupted - done_before:
        summary = json.loads((out / "runs" / trial_id / "result.json").read_text())
        assert summary["epochs_trained"] < epochs, f"{trial_id} restarted from scratch instead of its checkpoint"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_loopback_cluster_uses_both_nodes(data_flags, ray_temp_dirs, tmp_path):
    port = _free_port()
    env = _env("/tmp")
    head = ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={ray_temp_dirs()}"]
    worker = ["ray", "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--temp-dir={ray_temp_dirs()}"]
    for command in (head, worker):
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    out = tmp_path / "out"
    sweep = _cxrsweep(["run", "segmentation", "--profile", "smoke", "--set", "epochs=4", "--models", "unet",
                       "--tasks", "lungs", "--folds", "0,1", "--out", str(out), "--address", f"127.0.0.1:{port}",
                       "--progress-every", "5", *data_flags], env)
    log, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, log
    assert "no GPUs: trials run on the CPU" in log
    trials = read_trials(out)
    assert (trials.status == "ok").all() and len(trials) == 2
    assert trials.node_id.nunique() == 2, trials[["trial_id", "node_id"]]


def test_cluster_yaml_passes_ray_launcher_validation(repo_root: Path):
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((repo_root / "cluster.yaml").read_text())
    prepared = prepare_config(config)
    validate_config(prepared)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head runs no trials
    workers = [t for name, t in prepared["available_node_types"].items() if name != prepared["head_node_type"]]
    assert all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert "2.58.0-py311-cu" in prepared["docker"]["worker_image"]
    assert any("--shm-size" in option for option in prepared["docker"]["worker_run_options"])
