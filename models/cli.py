"""`cxrsweep models`: the registered segmentation networks and their size at a width."""
from __future__ import annotations

import argparse

from errors import UserError


def register(subparsers) -> None:
    models = subparsers.add_parser(
        "models", help="list the segmentation networks with parameter counts",
        description="Lists every registered segmenter with its parameter count at --width and its default "
                    "hyper-parameters. All networks start from random initialisation (no pretrained weights are "
                    "downloaded); `cxrsweep train --init-weights PATH` starts from local weights.")
    models.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0, the paper's)")
    models.add_argument("--in-channels", type=int, default=1)
    models.add_argument("--num-classes", type=int, default=2)
    models.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    from models.registry import SEGMENTERS, build_segmenter, list_segmenters

    if args.width <= 0:
        raise UserError(f"--width must be positive, got {args.width}")
    print(f"{'name':<8} {'parameters':>12}  description (width {args.width:g})")
    for name in list_segmenters():
        model = build_segmenter(name, width=args.width, in_channels=args.in_channels, num_classes=args.num_classes)
        count = sum(p.numel() for p in model.parameters())
        entry = SEGMENTERS.entry(name)
        print(f"{name:<8} {count:>12,}  {entry.description}")
        print(f"{'':<8} {'':>12}  defaults: {entry.defaults}")
    return 0
