"""What one validation pass costs outside the network: the engines' scoring on the device
(engine/evaluation/scoring.py) against the numpy reference it replaced (predict_masks, then
score_per_image mapping each prediction back through its crop box on the host), on a
paper-size split (50 images at 256 px) with and without content crops.

Prints the scoring of given predictions (what the pass costs after the network: on the host,
the whole-frame mapping and the metrics) and whole passes. `--model threshold` (default) is a
network that costs almost nothing (its two-class argmax does cost on a CPU); `--model unet
--width W` adds a real forward pass. Runs on the GPU when there is one, else on the CPU (one thread).

    python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --model unet --width 0.25 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Threshold(nn.Module):
    """Logits whose argmax is "brighter than the image mean": irregular masks at no cost."""

    def forward(self, images):
        return torch.cat([-images, images], dim=1)


def crop_frame(n: int, size: int, rng: np.random.Generator):
    """Whole-frame truth and crop boxes like the mild Montgomery phantoms': 4020 x 4892 films with
    padding and collimation trimmed from up to three sides (every image trimmed)."""
    from data_io.preprocess import CropBox
    from engine.data.segmentation import FullFrame

    boxes = []
    for _ in range(n):
        height, width = 4020, 4892
        top, left, bottom, right = (int(v) for v in rng.integers(0, 600, 4))
        boxes.append(CropBox(top, left, height - bottom, width - right, height, width).as_row())
    return FullFrame(masks=(rng.random((n, size, size)) < 0.3).astype(np.uint8), crop_boxes=np.array(boxes))


def timed(function, repeats: int, device: torch.device) -> float:
    function()  # warm-up (cuDNN autotuning, allocator)
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> int:
    from engine.data.segmentation import score_per_image
    from engine.evaluation.scoring import SplitScorer, score_split
    from engine.runtime.device import memory_format_for
    from engine.runtime.prediction import predict_masks
    from models.registry import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50, help="images in the split (paper: 50 JSRT validation)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", choices=("threshold", "unet"), default="threshold")
    parser.add_argument("--width", type=float, default=1.0, help="U-Net width (with --model unet)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.images, args.size, args.size)).astype(np.float32)
    masks = (rng.random(images.shape) < 0.3).astype(np.uint8)
    model = Threshold() if args.model == "threshold" else build_segmenter("unet", width=args.width)
    model = model.to(device, memory_format=memory_format_for(device))
    print(f"{args.images} images at {args.size} px, {args.model}"
          + (f" width {args.width:g}" if args.model == "unet" else " (almost no network cost)")
          + f", on {torch.cuda.get_device_name() if device.type == 'cuda' else 'the CPU (1 thread)'}; "
          f"median of {args.repeats} passes")
    for label, frame in (("no crop", None), ("all cropped", crop_frame(args.images, args.size, rng))):
        scorer = SplitScorer(images, masks, frame, device)
        predictions = scorer.predict(model)
        host_predictions = predictions.cpu().numpy()
        figures = {
            "scoring": (timed(lambda: score_per_image(host_predictions, masks, frame), args.repeats, device),
                        timed(lambda: scorer.score(predictions), args.repeats, device)),
            "whole pass": (timed(lambda: score_per_image(predict_masks(model, images, device), masks, frame),
                                 args.repeats, device),
                           timed(lambda: scorer(model), args.repeats, device)),
        }
        uploaded = timed(lambda: score_split(model, images, masks, frame, device), args.repeats, device)
        print(f"  {label}:")
        for part, (reference, on_device) in figures.items():
            print(f"    {part:10s}: reference {reference * 1000:8.1f} ms, on the device {on_device * 1000:8.1f} ms "
                  f"({reference / on_device:5.1f}x)")
        print(f"    whole pass with the split uploaded every pass (transfer validation): {uploaded * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
