"""What the training recipe costs: seconds of a training epoch with each augmentation recipe.

Trains the same network on the same images with `augmentation=none` (the paper's protocol) and
`robust` (the default) and prints the median training-phase seconds per epoch (`train_s`) of
each and the robust recipe's share of an epoch (target: <= 10 %), plus the recipe alone on one
batch. Run it alone: two CPU-heavy jobs on two cores slow each other.

    python benchmarks/bench_augment.py                       # the cpu profile: 128 px, width 0.25, batch 2
    python benchmarks/bench_augment.py --size 256 --width 1 --batch 4
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_train import synthetic_arrays  # noqa: E402
from engine.data.augmentation import robust_batch
from engine.data.segmentation import SegmentationData
from engine.runtime.device import resolve_device
from engine.supervised import train_supervised  # noqa: E402
from protocol.config import make_config  # noqa: E402


def epoch_seconds(recipe: str, data: SegmentationData, args) -> float:
    cfg = make_config("cpu", overrides={"image_size": args.size, "width": args.width, "batch_size": args.batch,
                                        "epochs": args.epochs, "augmentation": recipe, "model": args.model,
                                        "device": args.device, "checkpoint_every_s": 3600})
    with tempfile.TemporaryDirectory() as run_dir:
        result = train_supervised(cfg, data, run_dir)
    return statistics.median(h["train_s"] for h in result.history[1:] or result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=24, help="training images (the phantoms' 3 CV folds: 24)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    images, masks = synthetic_arrays(args.images + 8, args.size, seed=0)
    data = SegmentationData(images[:args.images], masks[:args.images], images[-8:-4], masks[-8:-4], images[-4:],
                            masks[-4:], test_ids=[f"t{i}" for i in range(4)], task="lungs")
    print(f"{args.model} width {args.width:g}, {args.size} px, batch {args.batch}, {args.images} images, on {device}"
          + (" (CPU figures)" if device.type == "cpu" else ""))
    seconds = {recipe: epoch_seconds(recipe, data, args) for recipe in ("none", "robust")}
    for recipe, value in seconds.items():
        print(f"  training epoch, augmentation={recipe:<6}: {value:.3f} s")
    share = (seconds["robust"] - seconds["none"]) / seconds["robust"]
    print(f"  robust recipe's share of an epoch: {100 * share:.1f} % (target <= 10 %)")
    batch = torch.from_numpy(images[:args.batch]).float()[:, None].to(device)
    batch_masks = torch.from_numpy(masks[:args.batch]).to(device)
    generator = torch.Generator().manual_seed(0)
    robust_batch(batch, batch_masks, generator)
    started, repeats = time.perf_counter(), 50
    for _ in range(repeats):
        robust_batch(batch, batch_masks, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"  the recipe alone: {1000 * (time.perf_counter() - started) / repeats:.2f} ms per batch of {args.batch}")


if __name__ == "__main__":
    main()
