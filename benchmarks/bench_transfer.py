"""Time per epoch of each of the proposed method's three steps (discriminative, generative,
supervised) at the paper's 256 px, on the available device.

An epoch is a pass over the larger training split in (A, B) pairs: JSRT's 60 % (148 images)
against Montgomery's 60 % (83), so ceil(148 / batch) steps. The steps run the engine's own code
(TranslationTrainer and ProposedRun.supervised_step) on random images of the right shape, so no
dataset is needed. CPU numbers depend on how many other processes share the cores: say which.

    python benchmarks/bench_transfer.py                    # paper profile, 256 px
    python benchmarks/bench_transfer.py --profile cpu --image-size 256 --steps 3
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.data.segmentation import PER_IMAGE_STANDARDISATION
from engine.data.transfer import TransferData
from engine.runtime.checkpoints import network_checkpoint, save_atomic
from engine.runtime.device import as_batch
from engine.transfer.proposed.gan import build_translator_from_config
from engine.transfer.proposed.run import ProposedRun
from engine.transfer.proposed.warmup import save_translator
from models.registry import build_segmenter
from protocol.config import make_config

JSRT_TRAIN, MONTGOMERY_TRAIN = 148, 83  # 60 % of 247 and of 138


def random_data(size: int, n: int, rng: np.random.Generator) -> TransferData:
    images = lambda count: rng.standard_normal((count, size, size)).astype(np.float32)  # noqa: E731
    masks = lambda count: (rng.random((count, size, size)) < 0.3).astype(np.uint8)  # noqa: E731
    return TransferData(
        task="lungs", source_train_images=images(n), source_train_masks=masks(n), source_val_images=images(1),
        source_val_masks=masks(1), target_train_images=images(n), target_labelled_images=images(n),
        target_labelled_masks=masks(n), target_val_images=images(1), target_val_masks=masks(1),
        target_test_images=images(1), target_test_masks=masks(1), target_test_ids=["test"], label_fraction=100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one untimed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = make_config(args.profile, args.overrides, image_size=args.image_size, experiment="transfer",
                      method="proposed", label_fraction=100.0)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(0)
    data = random_data(cfg.image_size, cfg.batch_size, rng)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kwargs = {"width": cfg.width, "in_channels": 1, "num_classes": 2}
        segmenter = save_atomic(network_checkpoint(build_segmenter("unet", **kwargs), "unet", kwargs, cfg.to_dict(),
                                                   "lungs", cfg.image_size, PER_IMAGE_STANDARDISATION, 0),
                                tmp / "m_a.pt")
        translator = save_translator(tmp / "translator.pt", build_translator_from_config(cfg), cfg, "bench", [])
        from engine.evaluation.label_budget import label_plan
        from models.registry import read_segmenter_checkpoint

        run = ProposedRun(cfg, data, label_plan(cfg, data), tmp / "run", read_segmenter_checkpoint(segmenter),
                          translator)
        device = run.device
        a = as_batch(data.source_train_images, device)
        b = as_batch(data.target_train_images, device)
        a_masks = torch.from_numpy(data.source_train_masks).long().to(device)
        b_masks = torch.from_numpy(data.target_labelled_masks).long().to(device)
        steps = {
            "discriminative": lambda: run.translation.discriminative_step(a, b),
            "generative": lambda: run.translation.generative_step(a, b),
            "supervised (A->B->A + labelled B)": lambda: run.supervised_step(a, a_masks, b, b_masks),
        }
        per_epoch = math.ceil(max(JSRT_TRAIN, MONTGOMERY_TRAIN) / cfg.batch_size)
        print(f"device {device} ({torch.get_num_threads()} threads, {os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f}); profile {cfg.profile}, {cfg.image_size} px, batch {cfg.batch_size}, "
              f"translator {cfg.translator} width {cfg.translator_width}, U-Net width {cfg.width}; "
              f"{per_epoch} steps per epoch")
        total = 0.0
        for name, step in steps.items():
            step()  # first call pays for allocation and kernel selection
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / args.steps
            total += seconds * per_epoch
            print(f"{name:36s} {seconds:8.3f} s/step  {seconds * per_epoch:9.1f} s/epoch")
        print(f"{'all three steps':36s} {'':8s}         {total:9.1f} s/epoch")


if __name__ == "__main__":
    main()
