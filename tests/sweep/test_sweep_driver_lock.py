"""One driver per results folder (sweep.driver_lock): a second `cxrsweep run` on an OUT that a
running driver holds is refused in one line naming that driver; a lock whose driver is gone is
taken over; the same in a bucket (moto's S3 server on localhost)."""
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

from sweep.driver_lock import LOCK_FILE, DriverLock, OutInUse

REPO = Path(__file__).resolve().parents[2]


def _record(host: str, pid: int, heartbeat_at: float, **extra) -> dict:
    return {"token": "someone-else", "host": host, "pid": pid, "started_at": heartbeat_at - 60,
            "heartbeat_at": heartbeat_at, "command": "cxrsweep run all --out X", **extra}


def _write(out: str, record: dict) -> None:
    lock = DriverLock(out)
    lock.storage.write_json(lock.path, record)


@pytest.fixture
def live_process():
    """A live process of this host and namespace that is not a driver: a lock naming it is held."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _same_namespace(pid: int) -> dict:
    from sweep.driver_lock import _pid_namespace, _process_start

    return {"pid_namespace": _pid_namespace(), "process_start": _process_start(pid)}


def test_a_live_driver_on_this_host_refuses_then_its_exit_frees_the_folder(tmp_path, live_process):
    out = str(tmp_path / "out")
    _write(out, _record(socket.gethostname(), live_process.pid, time.time() - 3600,
                        **_same_namespace(live_process.pid)))
    # Its heartbeat is an hour old, but this host can see the process runs: still held.
    with pytest.raises(OutInUse) as refused:
        DriverLock(out, settle_s=0).acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert f"host {socket.gethostname()}, pid {live_process.pid}, started " in message
    assert "cxrsweep run all --out X" in message and LOCK_FILE in message

    live_process.kill()
    live_process.wait()
    with DriverLock(out, settle_s=0) as lock:  # its process is gone: taken over at once
        held = json.loads(Path(out, LOCK_FILE).read_text())
        assert held["token"] == lock.token and held["pid"] == os.getpid()
    assert not Path(out, LOCK_FILE).exists()  # released


def test_a_reused_pid_does_not_hold_the_folder(tmp_path, live_process):
    """The pid runs, but it is a later process than the one that took the lock."""
    out = str(tmp_path / "out")
    record = _record(socket.gethostname(), live_process.pid, time.time(), **_same_namespace(live_process.pid))
    record["process_start"] = "1"  # the recorded driver started at the first clock tick after boot
    _write(out, record)
    with DriverLock(out, settle_s=0):
        pass


def _foreign_host_cases(out: str) -> None:
    fresh = _record("some-other-host", 4242, time.time() - 10)
    _write(out, fresh)
    with pytest.raises(OutInUse, match=r"host some-other-host, pid 4242, started .* last heartbeat 1\d s ago"):
        DriverLock(out, settle_s=0).acquire()
    _write(out, _record("some-other-host", 4242, time.time() - 600))  # its heartbeat stopped 10 min ago
    with DriverLock(out, settle_s=0, heartbeat_s=0.2) as lock:
        first = lock.read()["heartbeat_at"]
        time.sleep(0.7)
        assert lock.read()["heartbeat_at"] > first  # the holder keeps it fresh
        # A nested sweep of the same driver (tune runs its dependencies through run_grid) shares it.
        with DriverLock(out, settle_s=0):
            pass
        assert lock.read()["token"] == lock.token
    assert lock.read() is None


def test_another_hosts_lock_holds_until_its_heartbeat_is_stale(tmp_path):
    _foreign_host_cases(str(tmp_path / "out"))


@pytest.mark.slow
def test_the_lock_works_alike_in_a_bucket(s3_bucket):
    bucket, endpoint = s3_bucket
    _foreign_host_cases(f"s3://{bucket}/sweep?endpoint_override={endpoint}&scheme=http")


def test_of_two_drivers_starting_together_one_holds_the_folder(tmp_path):
    """Both find OUT free and write their record; the one read back after the settling wait holds it."""
    out = str(tmp_path / "out")
    script = ("import sys, time; from sweep.driver_lock import DriverLock, OutInUse\n"
              "lock = DriverLock(sys.argv[1], settle_s=1.0)\n"
              "try:\n    lock.acquire()\nexcept OutInUse as e:\n    print('refused', e); sys.exit(2)\n"
              "print('held'); sys.stdout.flush(); time.sleep(3); lock.release()\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script, out], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outputs
    assert sum(o.startswith("held") for o in outputs) == 1


@pytest.mark.ray
@pytest.mark.slow
def test_second_driver_on_a_running_out_is_refused(data_flags, ray_temp_dirs, armed_cxrsweep, tmp_path):
    """Two real `cxrsweep run` commands on one OUT: the first holds a trial at epoch 1 (a failpoint),
    the second exits 2 at once with one line naming the first, and writes nothing."""
    out = tmp_path / "out"
    run = ["run", "segmentation", "--profile", "smoke", "--set", "epochs=2", "--set", "num_threads=1",
           "--models", "unet", "--tasks", "lungs", "--folds", "0", "--out", str(out), "--progress-every", "2",
           *data_flags]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_temp_dirs())
    env.pop("RAY_ADDRESS", None)
    first = subprocess.Popen(armed_cxrsweep(run, hold=[("*", 1)]), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list((out / "ray" / "held").glob("*")):
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first driver never reached its held epoch"
            time.sleep(0.2)
        experiments = sorted(p.name for p in (out / "ray").glob("sweep-*"))
        started = time.time()
        second = subprocess.run([sys.executable, "-m", "commands.main", *run], env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"cxrsweep: error: --out {out} is in use by another cxrsweep driver "
                                   f"(host {socket.gethostname()}, pid {first.pid}, started ")
        assert time.time() - started < 30  # refused before reading data or starting Ray
        assert sorted(p.name for p in (out / "ray").glob("sweep-*")) == experiments
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
