"""Checkpoint files of a run: what they hold, how they are written and read back."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from engine.data.segmentation import labelled_foreground_share
from errors import UserError
from models.registry import load_torch_file, read_segmenter_checkpoint
from protocol.config import EXECUTION_FIELDS
from protocol.results import replace_atomically
from protocol.run_dir import best_checkpoint_path

log = logging.getLogger(__name__)


# Fields that may differ between a run and its resumption without changing what it computes
# (or, for epochs, that only extend it).
RESUMABLE_DIFFERENCES = EXECUTION_FIELDS | {"epochs"}


# Metrics of an epoch whose checkpoint was written: seconds it took (state gathered on the CPU and
# saved) and the bytes of last.pt. The sweep's trainable turns them into a Tune checkpoint.
CHECKPOINT_SECONDS = "checkpoint_s"


CHECKPOINT_BYTES = "checkpoint_bytes"


class CheckpointClock:
    """When a run writes `checkpoints/last.pt`: once `every_s` seconds have passed since the last
    write (or since this session of the run began) and after the last epoch; every epoch when
    `every_s <= 0`. That bounds the cost: a paper-size last.pt (U-Net + Adam state) is ~0.37 GB
    while a GPU epoch takes about a second. A killed run loses at most `every_s` of training."""

    def __init__(self, every_s: float):
        self.every_s = float(every_s)
        self.since = time.monotonic()

    def due(self, final: bool) -> bool:
        return final or self.every_s <= 0 or time.monotonic() - self.since >= self.every_s

    def write(self, build_state: Callable[[], dict], path: Path) -> dict[str, float]:
        """Save `build_state()` atomically at `path`; returns the epoch metrics that record it."""
        started = time.perf_counter()
        save_atomic(build_state(), path)
        self.since = time.monotonic()
        return {CHECKPOINT_SECONDS: time.perf_counter() - started, CHECKPOINT_BYTES: Path(path).stat().st_size}


def with_best(network: Callable[[], dict[str, Any]], best: dict[str, Any] | None, epoch: int) -> dict[str, Any]:
    """The network part of last.pt with the best epoch's checkpoint under "best" (kept in memory,
    on the network's device, between checkpoints). When the best epoch is this one both share
    their tensors, which torch.save stores once."""
    current = best if best is not None and best["epoch"] == epoch else network()
    return {**current, "best": best}


def best_of(last: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The best epoch's checkpoint a last.pt carries (or, for a run directory from before best
    weights travelled in last.pt, its best.pt)."""
    if "best" in last:
        return last["best"]
    legacy = best_checkpoint_path(run_dir)
    return read_checkpoint(legacy) if legacy.is_file() else None


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save so that a reader (or a resumed run) sees the old file or the new one, never half.
    Tensors are written as CPU tensors (`on_cpu`), wherever they were kept."""
    return replace_atomically(path, lambda tmp: torch.save(on_cpu(obj), tmp))


def on_cpu(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """`obj` with every tensor in its dicts, lists and tuples on the CPU. What holds no tensor
    elsewhere is returned as it is (a CPU run saves exactly what it always saved), and what is
    met twice is converted once, so torch.save still stores shared tensors and containers once
    (e.g. last.pt's network and its "best" when they are the same epoch)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        converted = obj if obj.device.type == "cpu" else obj.cpu()
    elif isinstance(obj, dict):
        items = [(key, on_cpu(value, memo)) for key, value in obj.items()]
        unchanged = all(value is original for (_, value), original in zip(items, obj.values()))
        converted = obj if unchanged else type(obj)(items)
    elif isinstance(obj, (list, tuple)):
        values = [on_cpu(value, memo) for value in obj]
        converted = obj if all(a is b for a, b in zip(values, obj)) else type(obj)(values)
    else:
        return obj
    memo[id(obj)] = converted
    return converted


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose state_dict keys match a freshly built network (torch.compile wraps it)."""
    return getattr(model, "_orig_mod", model)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `model`'s state_dict where the model lives: on a GPU a device-to-device copy that
    neither waits for the GPU nor moves 0.1-0.4 GB to the host every time an epoch is the best
    so far; files get CPU tensors when written (`save_atomic`)."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def network_checkpoint(model: nn.Module, arch: str, arch_kwargs: dict, config: dict, task: str,
                       image_size: int, normalisation: str, epoch: int,
                       data: dict[str, str] | None = None, crop_borders: bool = False,
                       train_foreground_range: list[float] | None = None) -> dict[str, Any]:
    """The network part of a checkpoint.

    `data` (dataset name -> content fingerprint) records what the network was trained on; with
    the config's fold, n_folds and seed it says which images were its training images.
    `preprocessing` records how its images were prepared (data_io.preprocess.preprocessing_record),
    so `cxrsweep segment` prepares new ones alike (`crop_borders` False: the images were resized
    whole, without the content crop). `train_foreground_range` (`foreground_range` of the masks
    it was trained on, computed once per run) is recorded as it is, for `cxrsweep segment` to
    compare new predictions against."""
    from data_io.preprocess import preprocessing_record

    state = state_copy(model)
    checkpoint = {"arch": arch, "arch_kwargs": dict(arch_kwargs), "state_dict": state, "config": dict(config),
                  "task": task, "image_size": int(image_size), "normalisation": normalisation, "epoch": int(epoch),
                  "data": dict(data or {}), "preprocessing": preprocessing_record(crop_borders)}
    if train_foreground_range is not None:
        checkpoint["train_foreground_range"] = list(train_foreground_range)
    return checkpoint


def foreground_range(train_masks: Sequence[np.ndarray]) -> list[float] | None:
    """The least and largest per-image foreground share of the training masks (in the cropped
    frame), or None without any."""
    fractions = [labelled_foreground_share(np.asarray(m).reshape(len(m), -1), axis=1) for m in train_masks if len(m)]
    if not fractions:
        return None
    every = np.concatenate(fractions)
    return [float(every.min()), float(every.max())]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_resumable(path: Path, saved: dict, current: dict) -> None:
    """Refuse to continue a run directory that was started with a different config."""
    differing = sorted(k for k in set(saved) | set(current)
                       if k not in RESUMABLE_DIFFERENCES and saved.get(k) != current.get(k))
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise UserError(f"{path}: cannot resume, the run directory was started with another config ({details}); "
                        "use a fresh --out directory")


def load_init_weights(model: nn.Module, path: str | Path) -> int:
    """Copy matching tensors from local weights (a cxrsweep checkpoint or a plain state_dict) into `model`.

    Returns how many tensors were copied. Tensors whose name or shape does not match are left at
    their random initialisation and reported, so partial matches are visible in the log.
    """
    path = Path(path)
    loaded = load_torch_file(path, "init weights file")
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a state_dict or a checkpoint dict, got {type(loaded).__name__}")
    target = unwrap(model).state_dict()
    matching = {k: v for k, v in loaded.items()
                if k in target and isinstance(v, torch.Tensor) and v.shape == target[k].shape}
    if not matching:
        raise UserError(f"{path}: no tensor matches the network by name and shape (wrong architecture or width?)")
    unwrap(model).load_state_dict(matching, strict=False)
    skipped = len(target) - len(matching)
    log.info("initialised %d tensors from %s (%d left at random init)", len(matching), path, skipped)
    return len(matching)


def read_checkpoint(path: Path) -> dict[str, Any]:
    return read_segmenter_checkpoint(path)
