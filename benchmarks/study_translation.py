"""What the warmed translator alone does to M_A, on phantoms: the proposed method's starting point.

Before its transfer epochs the proposed method applies M_A to G_BA(b). This study trains (or
reuses) M_A and the translator warm-up of each regime and repetition, exactly as
`study_adaptation.py` does (same `--work` folder, same caches), and prints, M_A as it is against
M_A through the warmed translator:

- the true target test and validation Jaccard (this study only: no run reads these labels);
- the source side the harm guard weighs (source validation through A -> B -> A);
- where the masks moved on the target test images: the mean distance between the centroids of
  M_A's lung masks with and without the translator, and the false-positive / false-negative
  pixels per image against the truth (over the whole image as the network sees it).

    python benchmarks/study_translation.py --phantoms mild=ph-mild,severe=ph-severe --repetitions 0,1 \\
        --work study --set w_identity=5

`--set KEY=VALUE` overrides the config of every warm-up (translator, its width, its loss weights).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.study_adaptation import Truth, source_model  # noqa: E402
from data_io.cache import load_jsrt, load_target  # noqa: E402
from engine.data.transfer import transfer_data  # noqa: E402
from engine.evaluation.guard import GuardSignals  # noqa: E402
from engine.runtime.device import torch_threads  # noqa: E402
from engine.runtime.prediction import predict_masks  # noqa: E402
from engine.transfer.proposed.warmup import warmup_translator  # noqa: E402
from models.loading import TranslateThenSegment, load_translator  # noqa: E402
from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint  # noqa: E402
from protocol.config import make_config  # noqa: E402


def lung_masks(model: TranslateThenSegment, images: np.ndarray) -> np.ndarray:
    """Bool [N, H, W] foreground of the model's argmax on the (network-sized) images, on the CPU."""
    return predict_masks(model, images, torch.device("cpu")) > 0


def centroids(masks: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[:masks.shape[1], :masks.shape[2]]
    area = np.maximum(masks.sum((1, 2)), 1)
    return np.stack([(masks * rows).sum((1, 2)) / area, (masks * cols).sum((1, 2)) / area], 1)


def describe(name: str, model: TranslateThenSegment, truth: Truth, signals: GuardSignals) -> str:
    scores = truth(model)
    source = float(np.mean(signals(model).values["source"]))
    return f"{name}: test {scores['truth_test'].mean():.4f} val {scores['truth_val'].mean():.4f} source {source:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", required=True, help="REGIME=DIR,... (folders of `cxrsweep data synth`)")
    parser.add_argument("--repetitions", default="0,1,2")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.overrides)
    work, device = Path(args.work), torch.device("cpu")
    base = make_config(args.profile, overrides)
    for regime, folder in (item.split("=", 1) for item in args.phantoms.split(",")):
        folder = Path(folder)
        source = load_jsrt(folder / "jsrt", folder / "scr", base.image_size, crop_borders=base.crop_borders)
        target = load_target("montgomery", folder / "montgomery", base.image_size, crop_borders=base.crop_borders)
        for repetition in (int(r) for r in args.repetitions.split(",")):
            cfg = make_config(args.profile, overrides, experiment="transfer", method="proposed", task="lungs",
                              label_fraction=0.0, target="montgomery", repetition=repetition)
            with torch_threads(cfg.num_threads):
                data = transfer_data(cfg, source, target)
                m_a = segmenter_from_checkpoint(read_segmenter_checkpoint(source_model(cfg, source, work, regime)))
                translator, _ = load_translator(warmup_translator(cfg, source, target, work / "translators" / regime))
                plain, through = TranslateThenSegment(m_a).eval(), TranslateThenSegment(m_a, translator).eval()
                truth, signals = Truth(data, device), GuardSignals(data, device)
                lines = [describe(name, model, truth, signals)
                         for name, model in (("M_A", plain), ("M_A(G_BA)", through))]
                gold = np.asarray(data.target_test_masks) > 0
                before, after = lung_masks(plain, data.target_test_images), lung_masks(through, data.target_test_images)
                moved = np.linalg.norm(centroids(before) - centroids(after), axis=1).mean()
                errors = [f"{(pred & ~gold).sum((1, 2)).mean():.0f} / {(~pred & gold).sum((1, 2)).mean():.0f}"
                          for pred in (before, after)]
            print(f"{regime} rep {repetition}: " + " | ".join(lines), flush=True)
            print(f"  test masks: centroid moved {moved:.2f} px by the translator; false positive / negative "
                  f"pixels per image {errors[0]} -> {errors[1]}", flush=True)


if __name__ == "__main__":
    main()
