"""What one sweep is asked to do besides its grid and data: where it writes, which Ray runtime it
uses, each trial's share of the cluster, retries and resume (the command line's sweep flags)."""
from __future__ import annotations

from dataclasses import dataclass

from protocol.config import FUSED_TRIALS, GPUS_PER_TRIAL

# Retries of a trial whose worker process or node was lost (a reclaimed spot instance), besides
# `retries` (sweep.retries). Generous: a retried trial resumes from its last checkpoint, so a loss
# costs at most the training since then; the bound stops a trial that takes its worker down every
# time (e.g. one the memory monitor kills) from retrying for ever.
LOST_WORKER_RETRIES = 5


@dataclass
class SweepOptions:
    out: str
    address: str | None = None  # None: start a local Ray runtime (or use the one already initialised)
    gpus_per_trial: float | None = None  # None: the profile's share (protocol.config.GPUS_PER_TRIAL)
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0  # 0: as many as the resources allow
    # Extra attempts of a trial that raised, each from its last checkpoint; a trial whose worker
    # process or node was lost is retried besides, up to LOST_WORKER_RETRIES times, unless
    # retries is 0 (sweep.retries).
    retries: int = 1
    resume: bool = False
    progress_every_s: float = 10.0
    fuse: int | None = None  # up to this many trials trained as one computation (None: protocol.config.FUSED_TRIALS)
    object_store_memory: int | None = None  # bytes, for a runtime started here


def gpu_share(requested: float | None, profile: str) -> float:
    """--gpus-per-trial, or the profile's default share (protocol.config.GPUS_PER_TRIAL)."""
    return float(requested if requested is not None else GPUS_PER_TRIAL[profile])


def fuse_count(requested: int | None, profile: str) -> int:
    """--fuse, or the profile's default (protocol.config.FUSED_TRIALS)."""
    return int(requested if requested is not None else FUSED_TRIALS.get(profile, 1))
