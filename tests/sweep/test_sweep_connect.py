"""How the sweep starts or joins its Ray runtime: the workers' setup hook."""
from __future__ import annotations

import subprocess
import sys

from ray import cloudpickle

from sweep import resources
from sweep.options import SweepOptions
from sweep.progress import RESTORE_LOGGER


def _connect(monkeypatch, **options) -> dict:
    calls = []
    monkeypatch.setattr(resources.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(resources.ray, "init", lambda **kwargs: calls.append(kwargs))
    resources.connect(SweepOptions(out="out", **options))
    return calls[0]


def test_workers_get_a_hook_that_loads_without_cxrsweep(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    hook = _connect(monkeypatch, address="127.0.0.1:6379")["runtime_env"]["worker_process_setup_hook"]
    # A worker may run the hook before it can import cxrsweep: load and run it in a Python with no
    # site-packages (-S) and not in the repository.
    check = ("import logging, pickle, sys; pickle.loads(sys.stdin.buffer.read())(); "
             f"print(logging.getLogger({RESTORE_LOGGER!r}).level)")
    done = subprocess.run([sys.executable, "-S", "-c", check], input=cloudpickle.dumps(hook), cwd=tmp_path,
                          capture_output=True, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "30"  # WARNING: Ray's "Restored on ..." INFO line is dropped


def test_ray_client_gets_no_hook(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "runtime_env" not in _connect(monkeypatch, address="ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert "runtime_env" not in _connect(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert "runtime_env" in _connect(monkeypatch)
