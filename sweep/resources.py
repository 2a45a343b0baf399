"""The sweep's Ray runtime and what each trial asks of it: starting or joining the runtime
(`connect`), the GPU node types an autoscaler may still add, and every trial's CPU / GPU share
(`trial_resources`: the requested share checked against the cluster, GPUs dropped where none can
exist).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import ray

from errors import UserError
from sweep.options import SweepOptions, gpu_share
from sweep.progress import worker_runtime_env


def connect(options: SweepOptions) -> None:
    """Start (or join, with options.address) the Ray runtime of this sweep, its workers quiet
    about restores (`worker_runtime_env`; not through Ray Client, a `ray://` address, whose job
    config takes no callable hook). A runtime already initialised in this process is used as it is."""
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if "://" not in (options.address or os.environ.get("RAY_ADDRESS", "")):
        kwargs["runtime_env"] = worker_runtime_env()
    if options.address:
        kwargs["address"] = options.address
    elif options.object_store_memory:
        kwargs["object_store_memory"] = options.object_store_memory
    ray.init(**kwargs)


def autoscaler_gpu_node_types(bootstrap: Path = Path("~/ray_bootstrap_config.yaml")) -> list[str]:
    """GPU node types the cluster launcher may still add (its config lies on the head node)."""
    path = bootstrap.expanduser()
    if not path.is_file():
        return []
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    node_types = config.get("available_node_types", {}) or {}
    return sorted(n for n, t in node_types.items() if float((t.get("resources") or {}).get("GPU", 0)) > 0)


def plan_resources(gpus: float, cpus: float, cluster_gpus: float, largest_node_cpus: float,
                   scaling_gpu_types: Sequence[str] = (), say=print) -> dict[str, float]:
    """{'cpu': c, 'gpu': g} for every trial; GPUs dropped (with a message) when none can exist."""
    if gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise UserError(f"--gpus-per-trial {gpus:g}: use a fraction in (0, 1] or a whole number of GPUs")
    if cpus <= 0:
        raise UserError(f"--cpus-per-trial {cpus:g}: must be positive")
    if gpus > 0 and cluster_gpus == 0:
        if scaling_gpu_types:
            say(f"[sweep] no GPU node is up yet; the autoscaler adds {', '.join(scaling_gpu_types)} workers on demand")
        else:
            say(f"[sweep] this Ray cluster has no GPUs: trials run on the CPU ({cpus:g} CPU each; "
                f"--gpus-per-trial {gpus:g} ignored)")
            gpus = 0.0
    if not scaling_gpu_types and cpus > largest_node_cpus:
        raise UserError(f"--cpus-per-trial {cpus:g}: no node has that many CPUs (largest: {largest_node_cpus:g})")
    return {"cpu": float(cpus), "gpu": float(gpus)}


def trial_resources(options: SweepOptions, profile: str, say=print) -> dict[str, float]:
    """`plan_resources` for the connected cluster; logs what each node offers."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for node in nodes:
        offered = {k: v for k, v in node["Resources"].items() if k in ("CPU", "GPU")}
        say(f"[sweep] node {node['NodeID'][:12]} ({node['NodeManagerAddress']}): {offered}")
    largest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    return plan_resources(gpu_share(options.gpus_per_trial, profile), float(options.cpus_per_trial),
                          ray.cluster_resources().get("GPU", 0), largest, autoscaler_gpu_node_types(), say)
