"""Fixtures of the sweep tests: one tiny phantom set and one local Ray runtime per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Credentials for the local S3 endpoint (moto accepts any), set before the shared Ray runtime
# starts so its workers inherit them; and no lookup of cloud instance metadata, which would
# stall every S3 client for seconds.
for _name, _value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                      ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_name, _value)

# Small enough that a smoke trial takes seconds on 2 shared cores.
N_SOURCE, N_TARGET, PHANTOM_SIZE = 15, 10, 128
# Logical resources of the shared runtime: 4 CPUs and one GPU that torch never sees.
RAY_CPUS, RAY_GPUS = 4, 1


@pytest.fixture(scope="session")
def sweep_phantoms(tmp_path_factory) -> dict[str, str]:
    """{"jsrt", "scr", "montgomery", "cache_dir"}: phantom folders written once per session."""
    from data_io.phantoms import synthesize

    root = tmp_path_factory.mktemp("sweep-phantoms")
    written = synthesize(root / "data", n_source=N_SOURCE, n_target=N_TARGET, source_size=PHANTOM_SIZE,
                         target_size=PHANTOM_SIZE, seed=0)
    paths = {name: str(path) for name, path in written.items()}
    paths["cache_dir"] = str(root / "cache")
    return paths


@pytest.fixture(scope="session")
def ray_runtime():
    """A real local Ray runtime shared by the sweep tests (capped object store, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS, object_store_memory=200 * 1024 * 1024,
                 include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on localhost (moto's server); yields "HOST:PORT"."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    try:
        _check_multipart_upload(endpoint)
    except Exception as exc:
        server.stop()
        if not isinstance(exc, OSError):  # pyarrow's error for a failed upload
            raise
        import moto
        pytest.fail(f"the local S3 endpoint (moto {moto.__version__}) cannot complete a multipart upload, as "
                    f"Ray and pyarrow send them; install moto[server]>=5.2.2 (pyproject's dev extra): {exc}")
    yield endpoint
    server.stop()


def _check_multipart_upload(endpoint: str) -> None:
    """One tiny upload through pyarrow without delayed open, i.e. the multipart path that Ray's
    storage uses (its validation marker, checkpoints): some moto releases answer it with an error."""
    import boto3
    import pyarrow.fs as pafs

    bucket = "multipart-probe"
    boto3.client("s3", endpoint_url=f"http://{endpoint}").create_bucket(Bucket=bucket)
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?endpoint_override={endpoint}&scheme=http")
    with fs.open_output_stream(f"{bucket}/probe") as stream:
        stream.write(b"probe")


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the local endpoint: (bucket name, "HOST:PORT")."""
    import re

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=f"http://{s3_server}").create_bucket(Bucket=name)
    return name, s3_server


@pytest.fixture
def data_paths(sweep_phantoms):
    from sweep.inputs import DataPaths

    return DataPaths(jsrt=sweep_phantoms["jsrt"], scr=sweep_phantoms["scr"], montgomery=sweep_phantoms["montgomery"],
                     cache_dir=sweep_phantoms["cache_dir"])


@pytest.fixture
def data_flags(sweep_phantoms) -> list[str]:
    """The data flags of `cxrsweep run` for the session's phantoms."""
    paths = sweep_phantoms
    return ["--jsrt", paths["jsrt"], "--scr", paths["scr"], "--montgomery", paths["montgomery"],
            "--cache-dir", paths["cache_dir"]]


@pytest.fixture
def failpoints():
    """sweep.failpoints.FAILPOINTS for a test to arm in this process (the driver's), disarmed after."""
    from sweep.failpoints import FAILPOINTS

    FAILPOINTS.clear()
    yield FAILPOINTS
    FAILPOINTS.clear()


@pytest.fixture
def armed_cxrsweep():
    """command(args, fail=[(glob, times, at_epoch)], hold=[(glob, epoch)]): the command line of a
    `cxrsweep ARGS` process with those failpoints armed in it (tests/sweep/armed_main.py)."""
    import sys

    def command(args: list[str], fail=(), hold=()) -> list[str]:
        armed = [sys.executable, str(Path(__file__).with_name("armed_main.py"))]
        for pattern, times, at_epoch in fail:
            armed += ["--fail", pattern, str(times), str(at_epoch)]
        for pattern, epoch in hold:
            armed += ["--hold", pattern, str(epoch)]
        return [*armed, "--", *args]

    return command


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _pids_mentioning(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _descendants(pids: list[int]) -> list[int]:
    """`pids` and every process under them (read from /proc)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, todo = set(pids), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def kill_ray_node(temp_dir: str) -> list[int]:
    """SIGKILL, all at once, every process of the Ray node started with `temp_dir` (its raylet,
    agents, and the worker processes under them), as a reclaimed spot instance loses them.
    Returns the process ids killed."""
    import signal

    victims = _descendants(_pids_mentioning(temp_dir))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


@pytest.fixture
def kill_node():
    """`kill_ray_node`, for a test that takes a node of its own cluster away."""
    return kill_ray_node


@pytest.fixture
def ray_temp_dirs():
    """Short private Ray temp dirs (socket paths must stay short). At teardown, the Ray
    processes started under them (and only those) are stopped by process id."""
    import signal
    import tempfile
    import time

    made: list[str] = []

    def make() -> str:
        made.append(tempfile.mkdtemp(prefix="cxrray", dir="/tmp"))
        return made[-1]

    yield make
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for marker in made:
            for pid in _pids_mentioning(marker):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 2  # until they are gone, at most 2 s
        while time.time() < deadline and any(_pids_mentioning(marker) for marker in made):
            time.sleep(0.1)
    for marker in made:
        shutil.rmtree(marker, ignore_errors=True)
