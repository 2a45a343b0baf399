"""`cxrsweep segment` on a real Ray runtime: a model worker killed mid-job is restarted and the job
completes with one row per image and whole files; and the console of the command shows
cxrsweep's lines only (Ray's go to OUT/logs/ray.log)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from commands.main import FIRST_PARTY

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from engine.runtime.checkpoints import network_checkpoint, save_atomic
    from models.registry import build_segmenter

    torch.manual_seed(0)
    return save_atomic(network_checkpoint(build_segmenter("unet", width=0.125), "unet", {"width": 0.125}, {},
                                          "lungs", 32, "per_image_standardisation", 1, crop_borders=True),
                       tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_a_killed_model_worker_is_restarted_and_the_job_completes(ray_runtime, sweep_phantoms, checkpoint,
                                                                   tmp_path, failpoints):
    """A failpoint makes one worker exit abruptly (os._exit) with a segmented batch in hand: Ray
    starts it again (it loads the checkpoint from its path) and retries its batches; every image
    gets exactly one row, every file is whole, and the masks are the plain loop's."""
    from inference.inputs import list_inputs
    from inference.local import segment_local
    from inference.output import SegmentOutput
    from inference.stages import checkpoint_info
    from sweep.segment_ray import RayOptions, segment_with_ray

    marker = tmp_path / "worker-exited"
    failpoints.exit_segment_worker_once(marker)
    info = checkpoint_info(checkpoint)
    items = list_inputs([Path(sweep_phantoms["montgomery"]) / "CXR_png"])
    assert len(items) >= 8
    output = SegmentOutput(tmp_path / "ray", info, checkpoint)
    recorded = []
    record = output.record
    output.record = lambda columns: recorded.extend(row["path"] for row in record(columns)) or recorded
    segment_with_ray(items, output, checkpoint, RayOptions(batch_size=2, workers=2), overlays="all")
    assert marker.exists(), "the failpoint did not kill a worker"
    assert sorted(recorded) == sorted(item.path for item in items)  # each image once, none lost
    rows = output.gather()
    assert len(rows) == len(items) and rows.path.is_unique and (rows.status == "ok").all()
    leftovers = [p for p in (tmp_path / "ray").rglob("*")
                 if p.is_file() and p.suffix not in (".png", ".parquet", ".json") and p.name != "ray.log"]
    assert leftovers == []  # no temporary file half-written

    local = SegmentOutput(tmp_path / "local", info, checkpoint)
    segment_local(items, local, checkpoint, device="cpu", batch_size=2, overlays="all")
    pd.testing.assert_frame_equal(local.gather().drop(columns=["segmented_at"]).reset_index(drop=True),
                                  rows.drop(columns=["segmented_at"]).reset_index(drop=True))
    for item in items:
        for folder in ("masks", "overlays"):
            written = tmp_path / "ray" / folder / item.mask_name
            np.asarray(Image.open(written))  # a whole PNG
            assert written.read_bytes() == (tmp_path / "local" / folder / item.mask_name).read_bytes()


# A console line of cxrsweep: its prints (and progress bar) start with "segment", its log lines
# name one of its packages (commands.main.FIRST_PARTY).
OWN_LINE = re.compile(r"^(segment\b|\s*unreadable: |\d\d:\d\d:\d\d \w+ (%s)[.\w]*: )" % "|".join(FIRST_PARTY))


def test_the_console_of_segment_shows_no_line_from_ray(sweep_phantoms, checkpoint, tmp_path):
    """`cxrsweep segment --ray` in a fresh process, which starts its own Ray runtime: stdout and
    stderr hold cxrsweep's lines only (progress bar included); Ray's went to OUT/logs/ray.log."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "commands.main", "segment", str(checkpoint),
               str(Path(sweep_phantoms["montgomery"]) / "CXR_png"), "--out", str(out), "--ray", "--workers", "2",
               "--batch-size", "2", "--progress-every", "0.01"]
    finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [line for stream in (finished.stdout, finished.stderr) for line in re.split(r"[\r\n]", stream)
             if line.strip()]
    foreign = [line for line in lines if not OWN_LINE.match(line)]
    assert foreign == [], "\n".join(foreign)
    assert any("it/s" in line or "image/s" in line for line in lines)  # the bar, with its rate and ETA
    assert "segment on Ray" in finished.stderr
    ray_log = (out / "logs" / "ray.log").read_text()
    assert "Started a local Ray instance" in ray_log  # Ray did speak: into its log file
