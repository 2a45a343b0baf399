"""A trained network applied to images: logits and masks, batch by batch on the device, and the
foreground of a prediction as the metrics and overlays read it."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.runtime.device import as_batch, autocast_for

# Images per forward pass when predicting. On the CPU the batches every recorded CPU result was
# computed in (a CPU convolution may round differently at another batch size); on a GPU larger
# batches mean fewer launches (a paper-size validation split, 50 images, is two passes).
CPU_EVAL_BATCH_SIZE = 16


CUDA_EVAL_BATCH_SIZE = 32


def eval_batch_size(device: torch.device) -> int:
    return CUDA_EVAL_BATCH_SIZE if device.type == "cuda" else CPU_EVAL_BATCH_SIZE


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
