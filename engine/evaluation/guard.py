"""Label-free evidence about an adapted model, next to M_A as it is: what the harm guard reads.

An adaptation method produces its result by a fixed schedule (engine/transfer/,
engine/transfer/self_training.py); the guard then asks whether that result is harmful. Nothing here
reads a target label. Each signal is per image, so two models can be compared image by image:

- `source`: the model's Jaccard on the SOURCE validation images, applied the way it is applied to
  target images (through A -> B -> A when it has a translator). Labels exist there. A model that
  has forgotten the anatomy it was trained on, or whose translation has started to distort what
  it carries, loses here.
- `plausibility`: the shape prior of engine/evaluation/selection.py on the target validation images. It
  saturates on sound masks and cannot see a few points of boundary, but it does see gross
  collapse: a blob over the body, empty or fragmented masks.
- `agreement`: agreement under test-time augmentation on the target validation images: the mean
  Jaccard between the mask on an image and the masks on a few label-preserving variants of it
  (gamma, blur, noise, a small zoom), mapped back. A model that has learnt the target's look
  gives the same answer on mild variants of it.
- `confidence`: minus the mean binary entropy of the foreground probability on the target
  validation images.
- `area`: minus the distance of each predicted mask's area from the source training masks' areas
  (|z| of the area share; the area prior of entropy-with-area-prior methods).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data.transfer import TransferData
from engine.evaluation.scoring import SplitScorer
from engine.evaluation.selection import Decision, ShapePrior, lower_confidence_bound
from engine.runtime.device import as_batch, autocast_for
from models.loading import TranslateThenSegment

SIGNALS = ("source", "plausibility", "agreement", "confidence", "area")


# The test-time variants `agreement` compares: intensity changes a scanner makes (a gamma either
# way, blur, noise) and a small change of framing. Mild on purpose: a sound model must agree with
# itself under them; none is a shift the target needs adapting to.
_GAMMAS = (0.7, 1.4)


_BLUR_SIGMA = 1.0


_NOISE_STD = 0.1


_ZOOM = 0.9


class SourceSide(nn.Module):
    """The model as it is applied, on source images: through A -> B -> A when it translates."""

    def __init__(self, model: TranslateThenSegment):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        translator = self.model.translator
        if translator is not None:
            images = translator.cycle_aba(images)
        return self.model.segmenter(images)


def _standardise(images: Tensor) -> Tensor:
    mean = images.mean(dim=(-2, -1), keepdim=True)
    std = images.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (images - mean) / std


def _unit_range(images: Tensor) -> Tensor:
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-6)


def _blur(images: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def _zoom_grid(images: Tensor, scale: float) -> Tensor:
    theta = torch.tensor([[1 / scale, 0, 0], [0, 1 / scale, 0]], dtype=images.dtype, device=images.device)
    return F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)


def _zoomed(images: Tensor, scale: float) -> Tensor:
    """Each image shrunk about its centre by `scale`, the border filled with the image's darkest value."""
    low = images.amin(dim=(-2, -1), keepdim=True)
    out = F.grid_sample(images - low, _zoom_grid(images, scale), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out + low


def _unzoomed(probability: Tensor, scale: float) -> Tensor:
    """A probability map of a `_zoomed` image mapped back to the original frame."""
    return F.grid_sample(probability, _zoom_grid(probability, 1 / scale), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def test_time_variants(images: Tensor, generator: torch.Generator) -> list[tuple[Tensor, float | None]]:
    """(variant images [B, 1, S, S], zoom scale to map its prediction back or None) of each variant."""
    unit = _unit_range(images)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return [
        *[(_standardise(unit ** gamma), None) for gamma in _GAMMAS],
        (_standardise(_blur(images, _BLUR_SIGMA)), None),
        (_standardise(images + _NOISE_STD * noise), None),
        (_standardise(_zoomed(images, _ZOOM)), _ZOOM),
    ]


@torch.no_grad()
def foreground_probability(model: nn.Module, images: Tensor, device: torch.device) -> Tensor:
    """Foreground probability [B, 1, S, S] of normalised images [B, 1, S, S] (model in eval mode)."""
    model.eval()
    with autocast_for(device):
        logits = model(images)
    return 1 - torch.softmax(logits.float(), dim=1)[:, :1]


@torch.no_grad()
def variant_probabilities(model: nn.Module, images: Tensor, device: torch.device,
                          generator: torch.Generator) -> list[Tensor]:
    """The foreground probability [B, 1, S, S] of each test-time variant of `images`, mapped back
    to the images' frame (the images themselves not among them)."""
    out = []
    for variant, scale in test_time_variants(images, generator):
        probability = foreground_probability(model, variant, device)
        out.append(probability if scale is None else _unzoomed(probability, scale))
    return out


def _jaccard(a: Tensor, b: Tensor) -> Tensor:
    inter = (a & b).sum((-2, -1)).float()
    union = (a | b).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@dataclass
class Evidence:
    """Per-image values of each signal (higher: better) for one candidate."""

    values: dict[str, np.ndarray]


class GuardSignals:
    """The signals of SIGNALS for a candidate model, on one transfer run's images. The source
    validation split and the target validation images go to the device once."""

    def __init__(self, data: TransferData, device: torch.device, batch: int = 16):
        self.device, self.batch = device, batch
        self.source = SplitScorer(data.source_val_images, data.source_val_masks, data.source_val_frame, device)
        self.prior = ShapePrior.from_masks(data.source_train_masks)
        self.target = as_batch(data.target_val_images, device)
        areas = np.asarray(data.source_train_masks, bool).reshape(len(data.source_train_masks), -1).mean(1)
        self.area_mean, self.area_std = float(areas.mean()), float(max(areas.std(), 1e-3))

    def __call__(self, model: TranslateThenSegment, signals=SIGNALS) -> Evidence:
        values: dict[str, np.ndarray] = {}
        if "source" in signals:
            values["source"] = self.source(SourceSide(model))[0]
        target = [name for name in signals if name != "source"]
        if target:
            values.update(self._target(model, target))
        return Evidence(values)

    @torch.no_grad()
    def _target(self, model: nn.Module, signals) -> dict[str, np.ndarray]:
        generator = torch.Generator().manual_seed(0)
        masks, agreement, entropy = [], [], []
        for start in range(0, len(self.target), self.batch):
            images = self.target[start:start + self.batch].float()
            probability = foreground_probability(model, images, self.device)
            mask = probability[:, 0] >= 0.5
            masks.append(mask)
            p = probability[:, 0].clamp(1e-6, 1 - 1e-6)
            entropy.append((-(p * p.log() + (1 - p) * (1 - p).log())).mean((-2, -1)))
            if "agreement" in signals:
                variants = variant_probabilities(model, images, self.device, generator)
                agreement.append(torch.stack([_jaccard(mask, other[:, 0] >= 0.5) for other in variants]).mean(0))
        mask = torch.cat(masks).cpu().numpy()
        out: dict[str, np.ndarray] = {}
        if "plausibility" in signals:
            out["plausibility"] = self.prior.plausibility(mask)
        if "agreement" in signals:
            out["agreement"] = torch.cat(agreement).cpu().numpy().astype(float)
        if "confidence" in signals:
            out["confidence"] = -torch.cat(entropy).cpu().numpy().astype(float)
        if "area" in signals:
            share = mask.reshape(len(mask), -1).mean(1)
            out["area"] = -np.abs(share - self.area_mean) / self.area_std
        return out


@dataclass
class Comparison:
    """One signal of the adapted model against M_A's, image by image."""

    m_a: float  # M_A's mean
    adapted: float  # the adapted model's mean
    change: float  # mean per-image change (adapted - M_A)
    lower_bound: float  # one-sided lower and upper confidence bounds of that change (paired t)
    upper_bound: float
    harmful: bool

    def to_dict(self) -> dict:
        return {name: round(value, 6) if isinstance(value, float) else value for name, value in vars(self).items()}


def compare(adapted: np.ndarray, m_a: np.ndarray, tolerance: float) -> Comparison:
    """Harmful when the mean change is a loss of more than `tolerance` AND the loss is significant:
    the one-sided upper confidence bound of the change (SELECTION_CONFIDENCE) is below zero."""
    change = np.asarray(adapted, float) - np.asarray(m_a, float)
    upper = -lower_confidence_bound(-change)
    mean = float(change.mean())
    return Comparison(float(np.mean(m_a)), float(np.mean(adapted)), mean, float(lower_confidence_bound(change)),
                      float(upper), bool(mean < -tolerance and upper < 0))


class HarmGuard:
    """Whether a transfer run's result is harmful next to M_A as it is; kept unless it is.

    Evidence of harm, each a significant loss beyond a tolerance (`compare`):
    - "source": the Jaccard on the source validation images of the model as it is applied
      (through A -> B -> A with a translator) falls by more than `guard_source_drop`. The source's
      anatomy is what M_A knows; an adaptation that loses it, or a translation that distorts what
      it carries, has no evidence on its side, and on real shifts such results were the losers.
    - "collapse": the shape plausibility of its masks on the unlabelled target validation images
      falls by more than `guard_collapse_drop`: blobs over the body, empty or fragmented masks.
    - "labelled": on the labelled images the run may choose with (the paper's budget, or held-back
      labels), its Jaccard is significantly below M_A's (no tolerance: a Jaccard loss is a loss).

    The plausibility tells gross failures from sound masks, not sound masks from each other: a
    rise of it is no evidence of gain where M_A's masks are sound (it saturates there, and can
    reward masks shaped like the source's). Where M_A fails grossly on the target, it is the
    evidence that counts: a result whose masks are more plausible by at least
    `guard_rescue_gain`, significantly, repaired gross failures of M_A (sound masks cannot gain
    that much), and a source-side loss is then the price of a translation that had far to go (a
    strongly shifted target); it is not refused for it.
    """

    def __init__(self, cfg, data: TransferData, plan, device: torch.device):
        self.tolerances = {"source": cfg.guard_source_drop, "plausibility": cfg.guard_collapse_drop}
        self.rescue_gain = cfg.guard_rescue_gain
        self.signals = GuardSignals(data, device)
        self.labelled = (SplitScorer(plan.select_images, plan.select_masks, plan.select_frame, device)
                         if plan.labelled_selection else None)

    def evidence(self, model: TranslateThenSegment) -> dict[str, np.ndarray]:
        values = self.signals(model, tuple(self.tolerances)).values
        if self.labelled is not None:
            values["labelled"] = self.labelled(model)[0]
        return values

    def decide(self, adapted: TranslateThenSegment, m_a: TranslateThenSegment) -> Decision:
        return weigh(self.evidence(adapted), self.evidence(m_a), self.tolerances, self.rescue_gain)


def weigh(adapted: dict[str, np.ndarray], m_a: dict[str, np.ndarray], tolerances: dict[str, float],
          rescue_gain: float) -> Decision:
    """HarmGuard's verdict from the per-image evidence of the adapted model and of M_A (the same
    signals, the same images): see the class's docstring."""
    comparisons = {name: compare(adapted[name], m_a[name], tolerances.get(name, 0.0)) for name in adapted}
    plausibility = comparisons["plausibility"]
    repaired = plausibility.change >= rescue_gain and plausibility.lower_bound > 0
    harmful = [name for name, comparison in comparisons.items()
               if comparison.harmful and not (name == "source" and repaired)]
    names = {"source": "source", "plausibility": "collapse", "labelled": "labelled"}
    if harmful:
        rule = f"harm ({', '.join(names[name] for name in harmful)})"
    elif comparisons["source"].harmful:
        rule = "no harm found (source loss outweighed: M_A's target masks were gross failures it repaired)"
    else:
        rule = "no harm found"
    deciding = comparisons[harmful[0]] if harmful else comparisons["source"]
    return Decision(keep_adaptation=not harmful, mean_gain=deciding.change, lower_bound=deciding.lower_bound,
                    rule=rule, evidence={name: c.to_dict() for name, c in comparisons.items()})
