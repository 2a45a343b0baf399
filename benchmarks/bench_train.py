"""Training throughput of each segmenter, and of the engine against a bare PyTorch loop.

Prints images/s for FCN, U-Net and SegNet (forward + backward + Adam step, default 256 px,
batch 4, the paper's settings) on the available device, then trains the same network on the
same images for a few epochs with `train_supervised` and with a bare loop and prints the
ratio of their training throughputs (target >= 0.95). The engine's figure is its own
training-phase time (the `train_s` it reports per epoch); the full-epoch figure, which adds
the validation pass and the checkpoint writes, is printed next to it.

    python benchmarks/bench_train.py                 # 256 px, batch 4, width 1
    python benchmarks/bench_train.py --width 0.25 --size 128 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.segmentation import SegmentationData
from engine.runtime.device import as_batch, autocast_for, memory_format_for, resolve_device
from engine.supervised import train_supervised  # noqa: E402
from models.registry import build_segmenter, list_segmenters  # noqa: E402
from protocol.config import make_config  # noqa: E402


def synthetic_arrays(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised noise images with a bright disc, and the disc as the mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    centres = rng.uniform(0.3, 0.7, (n, 2))
    masks = ((yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2 < 0.04).astype(np.uint8)
    images = masks + rng.normal(0, 0.7, masks.shape)
    images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True)
    return images.astype(np.float32), masks


def bare_epoch_seconds(name: str, width: float, images: np.ndarray, masks: np.ndarray, batch: int,
                       epochs: int, device: torch.device, seed: int) -> list[float]:
    """A minimal training loop: the yardstick the engine is compared with."""
    torch.manual_seed(seed)
    model = build_segmenter(name, width=width).to(device, memory_format=memory_format_for(device)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    x_all = as_batch(images, device)
    y_all = torch.from_numpy(masks).long().to(device)
    seconds = []
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(epoch)).to(device)
        _sync(device)
        started = time.perf_counter()
        for start in range(0, len(order), batch):
            index = order[start:start + batch]
            with autocast_for(device):
                loss = F.cross_entropy(model(x_all[index].contiguous(memory_format=memory_format_for(device))).float(),
                                       y_all[index])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=16, help="training images per epoch (default 16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is warm-up")
    parser.add_argument("--engine-model", default="unet", help="network for the engine-vs-bare comparison")
    parser.add_argument("--models", nargs="*", default=None, help="networks to time (default: all)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    print(f"device: {name}; {args.size} px, batch {args.batch}, width {args.width:g}, "
          f"{args.images} images x {args.epochs} epochs (first one not counted)")
    images, masks = synthetic_arrays(args.images, args.size, seed=0)

    print(f"{'network':<8} {'params':>11} {'images/s':>10}")
    for model_name in args.models or list_segmenters():
        params = sum(p.numel() for p in build_segmenter(model_name, width=args.width).parameters())
        seconds = bare_epoch_seconds(model_name, args.width, images, masks, args.batch, args.epochs, device, seed=0)
        print(f"{model_name:<8} {params:>11,} {args.images / statistics.median(seconds[1:]):>10.2f}", flush=True)

    # Engine versus bare loop, same network, data, batch and device, measured back to back.
    val_images, val_masks = synthetic_arrays(args.batch, args.size, seed=1)
    data = SegmentationData(images, masks, val_images, val_masks, val_images, val_masks,
                            test_ids=[f"bench{i}" for i in range(args.batch)], task="lungs", dataset="benchmark")
    cfg = make_config("paper", model=args.engine_model, overrides={
        "image_size": args.size, "width": args.width, "epochs": args.epochs, "batch_size": args.batch,
        "device": device.type, "num_threads": args.threads})
    bare = bare_epoch_seconds(args.engine_model, args.width, images, masks, args.batch, args.epochs, device, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        history = train_supervised(cfg, data, Path(run_dir)).history
    engine_train = [h["train_s"] for h in history][1:]
    engine_epoch = [h["epoch_s"] for h in history][1:]
    bare_rate = args.images / statistics.median(bare[1:])
    train_rate = args.images / statistics.median(engine_train)
    epoch_rate = args.images / statistics.median(engine_epoch)
    print(f"{args.engine_model}: bare loop {bare_rate:.2f} images/s; engine {train_rate:.2f} images/s training "
          f"(ratio {train_rate / bare_rate:.3f}, target >= 0.95); {epoch_rate:.2f} images/s with validation "
          f"on {args.batch} images and checkpoints (ratio {epoch_rate / bare_rate:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
