"""The sweep against a real S3-compatible endpoint (moto's server on localhost): run into a
bucket, build the report from it, resume; dependency fetches from a bucket are atomic."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from commands.main import main
from protocol.config import make_config
from protocol.grid import build_grid
from protocol.store import RunStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_run_report_and_resume_in_a_bucket(ray_runtime, data_flags, s3_bucket, tmp_path, capsys):
    bucket, endpoint = s3_bucket
    # The endpoint travels inside the URI, as pyarrow and Ray read it (MinIO users: docs/usage.md).
    out = f"s3://{bucket}/sweep?endpoint_override={endpoint}&scheme=http"
    command = ["run", "all", "--profile", "smoke", "--set", "num_threads=1", "--models", "unet", "--tasks", "lungs",
               "--folds", "0", "--repetitions", "0", "--methods", "source_only", "--fractions", "0",
               "--progress-every", "2", "--out", out, *data_flags]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "2 completed, 0 reused" in printed
    store = RunStore(out)
    assert store.uri("results") == f"s3://{bucket}/sweep/results?endpoint_override={endpoint}&scheme=http"
    assert store.list_files(store.path("results")) == ["images.parquet", "trials.parquet"]
    assert len(store.list_dirs(store.path("runs"))) == 2  # M_A and the source_only cell, fetched M_A from the bucket

    assert main(["report", out]) == 0
    shown = capsys.readouterr().out.strip()
    assert shown == store.uri("report", "index.html")
    assert ({"index.html", "table1.md", "table2.md", "fig7_jaccard_ci.png"}
            <= set(store.list_files(store.path("report"))))
    page = store.read_bytes(store.path("report", "index.html")).decode()
    assert "Table I" in page and "source_only" in page

    assert main([*command, "--resume"]) == 0
    assert "0 completed, 2 reused" in capsys.readouterr().out


def test_report_of_an_empty_bucket_path_names_it(s3_bucket, capsys):
    bucket, endpoint = s3_bucket
    out = f"s3://{bucket}/nothing?endpoint_override={endpoint}&scheme=http"
    assert main(["report", out]) == 2
    assert f"s3://{bucket}/nothing/results" in capsys.readouterr().err


def _fetch(out: str, spec_dict: dict, root: str, queue) -> None:
    """One fetcher process: fetch the dependency and hash its best.pt at once."""
    from protocol.grid import spec_from_dict

    folder = RunStore(out).fetch_dir(spec_from_dict(spec_dict), Path(root))
    queue.put((str(folder), hashlib.sha256((folder / "best.pt").read_bytes()).hexdigest()))


def test_concurrent_fetchers_never_see_a_partial_dependency(s3_bucket, tmp_path, monkeypatch):
    """Six processes and six threads fetch one published dependency from the bucket into one
    folder at once. Every one gets the whole file, and a watcher that polls the folder all along
    never sees a fetched folder that lacks a file or holds part of one."""
    from protocol.grid import spec_to_dict

    bucket, endpoint = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")  # the other way to name the endpoint
    out = f"s3://{bucket}/sweep"
    spec = next(iter(build_grid("segmentation", make_config("smoke"), models=["unet"], tasks=["lungs"],
                                folds=[0]).trials.values()))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB: its download takes a while
    (run_dir / "best.pt").write_bytes(payload)
    (run_dir / "result.json").write_text("{}")
    RunStore(out).publish(spec, run_dir, {"trial_id": spec.trial_id})
    expected = hashlib.sha256(payload).hexdigest()
    root = tmp_path / "dependencies"

    seen_partial: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for folder in root.glob(f"{spec.trial_id}/*"):
                if folder.name.startswith("."):
                    continue  # a fetcher's private staging folder
                best = folder / "best.pt"
                if not (folder / "trial.json").is_file() or not best.is_file() or best.stat().st_size != len(payload):
                    seen_partial.append(str(folder))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    queue = multiprocessing.get_context("spawn").Queue()
    processes = [multiprocessing.get_context("spawn").Process(target=_fetch,
                                                              args=(out, spec_to_dict(spec), str(root), queue))
                 for _ in range(6)]
    threads = [threading.Thread(target=_fetch, args=(out, spec_to_dict(spec), str(root), queue)) for _ in range(6)]
    for worker in (*processes, *threads):
        worker.start()
    for worker in (*processes, *threads):
        worker.join(timeout=120)
    stop.set()
    watcher.join()
    results = [queue.get(timeout=10) for _ in range(12)]
    assert all(process.exitcode == 0 for process in processes)
    assert {digest for _, digest in results} == {expected}
    assert len({folder for folder, _ in results}) == 1
    assert not seen_partial, seen_partial[:3]
    assert [p.name for p in (root / spec.trial_id).iterdir()] == [Path(results[0][0]).name]  # no staging left
    # A dependency republished (e.g. on other data) is fetched anew, never the old copy.
    RunStore(out).publish(spec, run_dir, {"trial_id": spec.trial_id, "again": True})
    again = RunStore(out).fetch_dir(spec, root)
    assert str(again) != results[0][0] and json.loads((again / "trial.json").read_text())["again"]
    assert isinstance(RunStore(out).fs, pafs.S3FileSystem)


def test_a_small_json_reaches_the_bucket_in_one_put(s3_bucket):
    """result.json, trial.json and the sweep state go up as one PutObject each (all or nothing, one
    request), not as a multipart upload: S3 gives a multipart object an ETag ending in "-<parts>"."""
    import boto3

    bucket, endpoint = s3_bucket
    store = RunStore(f"s3://{bucket}/sweep?endpoint_override={endpoint}&scheme=http")
    store.write_json(store.path("state.json"), {"trials": 3})
    assert store.read_json(store.path("state.json")) == {"trials": 3}
    head = boto3.client("s3", endpoint_url=f"http://{endpoint}").head_object(Bucket=bucket, Key="sweep/state.json")
    assert "-" not in head["ETag"].strip('"'), head["ETag"]
