"""Device settings of the engines (device, mixed precision, memory layout, optimiser, thread
count) and batched prediction."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch
from torch import nn

from errors import UserError

# Images per forward pass when predicting. On the CPU the batches every recorded CPU result was
# computed in (a CPU convolution may round differently at another batch size); on a GPU larger
# batches mean fewer launches (a paper-size validation split, 50 images, is two passes).
CPU_EVAL_BATCH_SIZE = 16
CUDA_EVAL_BATCH_SIZE = 32


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


def eval_batch_size(device: torch.device) -> int:
    return CUDA_EVAL_BATCH_SIZE if device.type == "cuda" else CPU_EVAL_BATCH_SIZE


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


def logits_batches(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device):
    """The model's logits [B, 2, S, S], batch after batch (eval mode), for normalised images:
    [N, S, S] on the host (uploaded batch by batch), or [N, 1, S, S] already on `device` (`as_batch`:
    a split scored every epoch goes up once)."""
    model.eval()
    batch = eval_batch_size(device)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        with autocast_for(device):
            logits = model(chunk if isinstance(chunk, torch.Tensor) else as_batch(chunk, device))
        yield logits


@torch.no_grad()
def predict_masks(model: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Foreground masks uint8 [N, S, S] for normalised images [N, S, S]."""
    out = [logits.argmax(dim=1).to(torch.uint8).cpu().numpy() for logits in logits_batches(model, images, device)]
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.uint8)


@torch.no_grad()
def predict_foreground(model: nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Foreground probability float32 [N, S, S] for normalised images [N, S, S]."""
    out = [(1 - torch.softmax(logits.float(), dim=1)[:, 0]).cpu().numpy()
           for logits in logits_batches(model, images, device)]
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)


@torch.no_grad()
def foreground_masks(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device) -> np.ndarray:
    """bool [N, S, S]: where the foreground probability is at least 0.5, decided on the device (one
    host copy per pass); `images` as for `logits_batches`."""
    out = [(1 - torch.softmax(logits.float(), dim=1)[:, 0]) >= 0.5 for logits in logits_batches(model, images, device)]
    return torch.cat(out).cpu().numpy() if out else np.zeros((0,) + tuple(images.shape[-2:]), bool)


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
