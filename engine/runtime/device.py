"""Device settings of the engines (device, mixed precision, memory layout, optimiser, thread
count) and batched prediction."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch
from torch import nn

from errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bfloat16 on GPUs that compute it natively (Ampere and later: no loss
    scaling needed), else float16. None on the CPU, where full precision is exact and deterministic."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def autocast_for(device: torch.device):
    dtype = amp_dtype(device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler_for(device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling where float16 needs it; a pass-through elsewhere (bfloat16 has float32's range)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Restore a loss scaler; its saved state is empty where no loss scaling ran (CPU, bfloat16)."""
    if state:
        scaler.load_state_dict(state)


def prepare_device(device: torch.device) -> None:
    """Training inputs have fixed sizes: on CUDA let cuDNN time its kernels once and keep the fastest."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_in_place(module: nn.Module) -> None:
    """torch.compile the outermost submodules that define a forward (a translator's own methods
    call its parts), in place, so state_dict keys stay those of the plain network."""
    if type(module).forward is not nn.Module.forward:
        module.compile()
        return
    for child in module.children():
        compile_in_place(child)


def adam(parameters, device: torch.device, **options) -> torch.optim.Adam:
    """torch.optim.Adam; on CUDA its fused implementation (the whole update in a few kernels, not
    a dozen launches per group of tensors: the small-batch steps here are launch-bound). On the
    CPU torch's default, which every recorded CPU result was computed with."""
    if device.type == "cuda":
        options["fused"] = True
    return torch.optim.Adam(parameters, **options)


def memory_format_for(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, S, S] float images -> [N, 1, S, S] tensor on `device` in its preferred layout."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None].to(device)
    return tensor.contiguous(memory_format=memory_format_for(device))


def as_mask_batch(masks: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, S, S] masks -> uint8 tensor on `device` (int64 masks of a 256 px dataset would take 8x
    the memory; a drawn batch is widened when the loss needs it)."""
    return torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)).to(device)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with `count` torch threads (0: as the process has them), and leave the process-wide
    count as it was: a run leaves its caller as it found it."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
