"""The sweep as separate processes: a killed driver resumed with --resume, a real two-node Ray
cluster on loopback whose trials land on both nodes, and one that loses its worker node while
trials run on it, as a reclaimed spot instance does."""
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

from protocol.results import read_images, read_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _cxrsweep(args: list[str], env: dict, command: list[str] | None = None, **kw) -> subprocess.Popen:
    """`cxrsweep ARGS` as a process of its own; `command`, when given, is its command line (one
    that arms failpoints first: the `armed_cxrsweep` fixture)."""
    command = command or [sys.executable, "-m", "commands.main", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _env(ray_tmp: str) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmp)
    env.pop("RAY_ADDRESS", None)
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


def test_killed_fused_driver_resumes_without_duplicates(data_flags, ray_temp_dirs, armed_cxrsweep, tmp_path):
    """SIGKILL the driver while a fused group (folds 0 and 1, `--fuse 2`) is mid-run, at a point
    the test controls: the hold failpoint stops the group after fold 0's epoch-2 checkpoint until
    the driver is gone; fold 2, alone, has finished. --resume must continue both members, each from
    its own checkpoint (exactly 2 epochs left each), reuse fold 2 and duplicate no row."""
    out = tmp_path / "out"
    epochs, held_epoch = 4, 2
    run = ["run", "segmentation", "--profile", "smoke", "--set", f"epochs={epochs}", "--set", "num_threads=1",
           "--models", "unet", "--tasks", "lungs", "--folds", "0,1,2", "--out", str(out), "--progress-every", "2",
           "--checkpoint-every-s", "0", "--cpus-per-trial", "0.5", "--fuse", "2", *data_flags]  # two slots on one core
    held_driver = armed_cxrsweep(run, hold=[("segmentation-unet-lungs-fold0-*", held_epoch)])
    driver = _cxrsweep(run, _env(ray_temp_dirs()), held_driver, start_new_session=True)

    def finished() -> set[str]:
        return {p.parent.name for p in (out / "runs").glob("*/trial.json")}

    def held() -> list[Path]:
        return list((out / "ray" / "held").glob("*"))

    def state_saved_after_the_hold() -> bool:
        # The group's checkpoint is resumable once Tune has saved its experiment state after the
        # group reported it (the mark is written after that report returned).
        marks, others_done = held(), len(finished()) == 1
        states = list((out / "ray").glob("sweep-*/experiment_state-*.json"))
        return bool(marks and others_done and any(s.stat().st_mtime_ns > marks[0].stat().st_mtime_ns for s in states))

    try:
        _wait_for(state_saved_after_the_hold, 300, "the fused group checkpointed and fold 2 finished", driver)
    finally:
        killed_at = time.time()
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and what it started in its session
        driver.wait()
    held_trial = held()[0].name
    done_before = finished()
    assert (out / "driver-lock.json").is_file()  # the killed driver could not give its lock back
    assert held_trial not in done_before and len(done_before) == 1 and "fold2" in next(iter(done_before))

    resumed = _cxrsweep([*run, "--resume"], _env(ray_temp_dirs()))
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "resuming Ray Tune experiment" in log
    assert not (out / "driver-lock.json").exists()  # taken over from the dead driver, released at the end
    # Ray's own restore message (logged in the trial's worker before the trial runs) stays off the
    # console; each member says where it resumes from in ray.log.
    assert "from checkpoint:" not in log, log
    ray_log = (out / "logs" / "ray.log").read_text()
    trials, images = read_trials(out), read_images(out)
    assert len(trials) == 3 and trials.trial_id.is_unique and (trials.status == "ok").all()
    assert len(images) == trials.n_test_images.sum() and not images.duplicated(["trial_id", "image_id"]).any()
    rows = trials.set_index("trial_id")
    members = [held_trial, *json.loads((out / "runs" / held_trial / "trial.json").read_text())["fused_with"]]
    assert len(members) == 2 and not set(members) & done_before
    for member in members:
        assert f"[trial {member}] resuming from its checkpoint" in ray_log
        summary = json.loads((out / "runs" / member / "result.json").read_text())
        assert summary["epochs_trained"] == epochs - held_epoch, f"{member} did not continue from its checkpoint"
        assert rows.loc[member, "checkpoint_count"] == epochs  # one per epoch across both attempts
    # The finished trial was not run again: its outputs are the ones published before the kill.
    for trial_id in done_before:
        assert json.loads((out / "runs" / trial_id / "trial.json").read_text())["finished_at"] < killed_at


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    """The `ray` command of the interpreter running the tests (a venv's bin need not be on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def test_two_node_loopback_cluster_uses_both_nodes(data_flags, ray_temp_dirs, tmp_path):
    port = _free_port()
    env = _env("/tmp")
    head = [_ray_cli(), "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_temp_dirs()}"]
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--temp-dir={ray_temp_dirs()}"]
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


def _start_node(command: list[str], env: dict) -> None:
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr


@pytest.mark.parametrize("retries", [1, 0])
def test_a_lost_worker_node_loses_no_trial(retries, data_flags, ray_temp_dirs, kill_node, armed_cxrsweep, tmp_path):
    """cluster.yaml's shape on loopback: a head that runs no trial (0 CPUs) and one worker node
    running both trials, each held after its epoch-2 checkpoint (a failpoint). Every process of the
    worker node is killed at once, as a spot reclaim does; a fresh worker node joins, as the
    autoscaler would add one. Fold 0 also raises once as it resumes (injected failure): the node
    loss must not have used up its one retry (sweep.retries).

    --retries 1: every trial ends done exactly once, on the new node, resumed from its own
    epoch-2 checkpoint; trials.parquet and images.parquet hold each trial and image once.
    --retries 0: nothing is retried; both trials fail, saying their worker was lost."""
    port, epochs, held_epoch = _free_port(), 4, 2
    env = _env("/tmp")
    nodes = {"head": ray_temp_dirs(), "lost": ray_temp_dirs(), "new": ray_temp_dirs()}
    store_bytes = "--object-store-memory=100000000"
    _start_node([_ray_cli(), "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={nodes['head']}", store_bytes], env)
    worker = [_ray_cli(), "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", store_bytes]
    _start_node([*worker, f"--temp-dir={nodes['lost']}"], env)
    out = tmp_path / "out"
    run = ["run", "segmentation", "--profile", "smoke", "--set", f"epochs={epochs}", "--set", "num_threads=1",
           "--models", "unet", "--tasks", "lungs", "--folds", "0,1", "--fuse", "1", "--checkpoint-every-s", "0",
           "--retries", str(retries), "--out", str(out), "--address", f"127.0.0.1:{port}", "--progress-every", "2",
           *data_flags]
    armed = armed_cxrsweep(run, hold=[("*", held_epoch)], fail=[("segmentation-unet-lungs-fold0-*", 1, held_epoch + 1)])
    driver = _cxrsweep(run, env, armed)
    _wait_for(lambda: len(list((out / "ray" / "held").glob("*"))) == 2, 240, "both trials held on the worker",
              driver)
    assert kill_node(nodes["lost"])
    if retries:
        _start_node([*worker, f"--temp-dir={nodes['new']}"], env)
    log, _ = driver.communicate(timeout=300)

    trials, images = read_trials(out), read_images(out)
    assert len(trials) == 2 and trials.trial_id.is_unique, trials[["trial_id", "status"]]
    if not retries:
        assert driver.returncode == 1, log
        assert (trials.status == "failed").all()
        for trial_id in trials.trial_id:
            error = json.loads((out / "runs" / trial_id / "failed.json").read_text())["error"]
            assert error.startswith("its worker process or node was lost ("), error
        return
    assert driver.returncode == 0, log
    assert (trials.status == "ok").all(), trials[["trial_id", "status"]]
    assert len(images) == trials.n_test_images.sum() and not images.duplicated(["trial_id", "image_id"]).any()
    ray_log = (out / "logs" / "ray.log").read_text()
    rows = trials.set_index("trial_id")
    for trial_id in trials.trial_id:
        first_node = ray_log.split(f"[trial {trial_id}] starting on node ")[1].split()[0]
        assert not rows.loc[trial_id, "node_id"].startswith(first_node), "finished on the node that was lost"
        assert f"[trial {trial_id}] resuming from its checkpoint" in ray_log
        summary = json.loads((out / "runs" / trial_id / "result.json").read_text())
        assert summary["epochs_trained"] == epochs - held_epoch, f"{trial_id} did not continue from its checkpoint"
        assert rows.loc[trial_id, "checkpoint_count"] == epochs  # one per epoch across its attempts
    assert len(list((out / "ray" / "injected-failures").glob("*"))) == 1  # fold 0 did raise after its resume


def _fake_autoscaling_config(cluster_yaml: Path, port: int, idle_timeout_minutes: float) -> dict:
    """cluster.yaml's node types for Ray's fake multi-node provider, which starts each node the
    autoscaler launches as local processes: the worker types with their resources and limits,
    the head as the provider's head type with no resources (cluster.yaml's head runs no trial)."""
    import yaml
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

    cluster = yaml.safe_load(cluster_yaml.read_text())
    types = {name: {"resources": {**node["resources"], "object_store_memory": 100_000_000}, "node_config": {},
                    "min_workers": node.get("min_workers", 0), "max_workers": node["max_workers"]}
             for name, node in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    types[FAKE_HEAD_NODE_TYPE] = {"resources": {}, "node_config": {}, "max_workers": 0}
    return {"cluster_name": "fake", "max_workers": cluster["max_workers"],
            "upscaling_speed": cluster.get("upscaling_speed", 1.0), "idle_timeout_minutes": idle_timeout_minutes,
            # Nodes share one IP here: the autoscaler tells them apart by node id, and updates none.
            "provider": {"type": "fake_multinode", "gcs_address": f"127.0.0.1:{port}", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": types, "head_node_type": FAKE_HEAD_NODE_TYPE, "auth": {"ssh_user": "ubuntu"},
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": []}


def _autoscaler_events(head_temp_dir: str) -> list[str]:
    events = Path(head_temp_dir, "session_latest", "logs", "events", "event_AUTOSCALER.log")
    return [json.loads(line)["message"] for line in events.read_text().splitlines()] if events.exists() else []


def _count_nodes(events: list[str], verb: str, node_type: str) -> int:
    """Nodes of `node_type` in the autoscaler's "Adding N node(s) of type T." / "Removing N nodes
    of type T (idle)." events."""
    return sum(int(e.split()[1]) for e in events if e.startswith(verb) and f" of type {node_type}" in e)


def test_the_autoscaler_adds_gpu_workers_while_trials_wait_and_removes_them_idle(
        data_flags, ray_temp_dirs, repo_root, tmp_path):
    """cluster.yaml's node types under Ray's autoscaler, on Ray's fake multi-node provider: a head
    with no resources, no worker up. The sweep sees the GPU worker types the launcher may add
    (~/ray_bootstrap_config.yaml, as `ray up` leaves it on the head) and keeps every trial's GPU
    share; its trials wait; the autoscaler adds workers of the smallest GPU type that fits them
    (never the 4-GPU on-demand one for two half-GPU trials), the trials run there, and once they
    are done the idle workers are removed (cluster.yaml's 10-minute idle timeout cut to 6 s)."""
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    port, head = _free_port(), ray_temp_dirs()
    home = tmp_path / "home"
    home.mkdir()
    config = _fake_autoscaling_config(repo_root / "cluster.yaml", port, idle_timeout_minutes=0.1)
    (home / "ray_bootstrap_config.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = _env("/tmp")
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    _start_node([_ray_cli(), "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                 "--object-store-memory=100000000", "--include-dashboard=false", "--disable-usage-stats",
                 f"--temp-dir={head}", f"--autoscaling-config={home / 'ray_bootstrap_config.yaml'}"], head_env)
    out = tmp_path / "out"
    sweep = _cxrsweep(["run", "segmentation", "--profile", "smoke", "--set", "epochs=2", "--set", "num_threads=1",
                       "--models", "unet", "--tasks", "lungs", "--folds", "0,1", "--gpus-per-trial", "0.5",
                       "--out", str(out), "--address", f"127.0.0.1:{port}", "--progress-every", "5", *data_flags],
                      {**env, "HOME": str(home)})
    log, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, log
    assert "no GPU node is up yet; the autoscaler adds gpu.a10g.spot, gpu.a10g.x4.ondemand workers" in log, log
    trials = read_trials(out)
    assert (trials.status == "ok").all() and len(trials) == 2, trials[["trial_id", "status"]]
    assert trials.node_id.str.len().eq(len(FAKE_HEAD_NODE_ID)).all() and (trials.node_id != FAKE_HEAD_NODE_ID).all(), \
        trials.node_id
    events = _autoscaler_events(head)
    added = _count_nodes(events, "Adding", "gpu.a10g.spot")
    assert added >= 1 and _count_nodes(events, "Adding", "gpu.a10g.x4.ondemand") == 0, events
    _wait_for(lambda: _count_nodes(_autoscaler_events(head), "Removing", "gpu.a10g.spot") >= added, 120,
              f"the {added} idle gpu.a10g.spot worker(s) to be removed: {_autoscaler_events(head)}")
