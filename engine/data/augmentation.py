"""Training-time augmentation of whole batches on the device.

Recipes (`RunConfig.augmentation`, names in protocol.config.AUGMENTATIONS):
- "none": the paper's protocol (§V-B trains without augmentation).
- "affine": small affine warps (rotation ±10°, scale ±10 %, shift ±5 %): what a config's
  `augment=true` stands for, kept so that results trained with it stay reproducible.
- "robust" (the default): a segmenter trained to expect other scanners and other patients.
  Every parameter below comes from a published recipe, not from our phantoms:
  * geometry, on every sample (as bob.ip.binseg's and torchvision's random affine are): rotation
    ±15° (bob.ip.binseg's chest X-ray recipe; nnU-Net's ±180° would turn films upside down),
    isotropic zoom 0.7-1.4 (nnU-Net v2), anisotropic aspect 0.8-1.25 and translation ±8 % of the
    side (the recipe a probe of the real JSRT -> Montgomery pair measured);
  * appearance, each with nnU-Net v2's 2D probability and range: Gaussian noise (p 0.1,
    variance 0-0.1 of the standardised image), Gaussian blur (p 0.2, sigma 0.5-1 px),
    brightness x0.75-1.25 (p 0.15), contrast x0.75-1.25 (p 0.15), simulated low resolution
    (p 0.25, down to 0.5-1 of the side, nearest down, bicubic up), inverted gamma (p 0.1) and
    gamma (p 0.3), both 0.7-1.5.
  Never a mirror: the heart and the patient's sides are not symmetric.

Intensities. The pipeline standardises every image (mean 0, std 1) and so removes any linear
change of intensity at test time; a linear brightness or contrast change of a standardised image
would teach the network nothing. So brightness, contrast and the gammas act on the image mapped
to [0, 1] by its own range, clipped there (over- and under-exposure saturate, as film and
detectors do), and every augmented image is standardised again at the end: the network sees what
the test-time pipeline shows it.

Determinism: every random number is drawn from the `torch.Generator` the engine seeds with
(seed, epoch) (noise through a device generator seeded from it), so an augmented epoch is a
function of (seed, epoch, batch order) and a resumed run replays it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NONE = "none"


AFFINE = "affine"


ROBUST = "robust"


@dataclass(frozen=True)
class RobustRecipe:
    """The robust recipe's ranges and probabilities (see the module docstring for their sources)."""

    rotation_deg: float = 15.0
    zoom: tuple[float, float] = (0.7, 1.4)
    aspect: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.08  # of the side
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution: tuple[float, float] = (0.5, 1.0)
    p_inverted_gamma: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)


ROBUST_RECIPE = RobustRecipe()


def augment(name: str, images: torch.Tensor, masks: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`images` [B, 1, S, S] float and `masks` [B, S, S] (integer) augmented by recipe `name`,
    both warped by the same transform; masks come back as int64. "none" returns them as they are."""
    if name == NONE:
        return images, masks
    if name == AFFINE:
        return affine_batch(images, masks, generator)
    if name == ROBUST:
        return robust_batch(images, masks, generator)
    raise ValueError(f"unknown augmentation {name!r}; choose from {NONE}, {AFFINE}, {ROBUST}")


def _warp(images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor,
          padding_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    warped_masks = F.grid_sample(masks[:, None].to(images.dtype), grid, mode="nearest", align_corners=False)
    return warped, warped_masks[:, 0].long()


def affine_batch(images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random affine warps (rotation ±10°, scale ±10 %, shift ±5 %), no flips."""
    n = images.shape[0]
    draw = torch.rand(n, 4, generator=generator).to(images.device, non_blocking=True)  # staged at once: no wait
    angle = (draw[:, 0] * 2 - 1) * math.radians(10)
    scale = 1 + (draw[:, 1] * 2 - 1) * 0.1
    shift = (draw[:, 2:] * 2 - 1) * 0.1  # in [-1, 1] grid units: 0.1 is 5 % of the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return _warp(images, masks, theta, "border")


def _uniform(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def _log_uniform(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Factors drawn uniformly in log space: a zoom of 0.7 is as likely as one of 1/0.7."""
    return torch.exp(math.log(bounds[0]) + u * (math.log(bounds[1]) - math.log(bounds[0])))


def _standardise(images: torch.Tensor) -> torch.Tensor:
    flat = images.flatten(1)
    mean = flat.mean(1).view(-1, 1, 1, 1)
    std = flat.std(1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (images - mean) / std


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own sigma (0: unchanged), one grouped separable convolution."""
    n, _, height, width = images.shape
    radius = 3  # 3 sigma of the largest sigma (1 px)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    safe = sigma.clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    kernel = torch.where(sigma.view(-1, 1) > 0, kernel, (offsets.view(1, -1) == 0).to(images.dtype))
    kernel = kernel / kernel.sum(1, keepdim=True)
    flat = images.reshape(1, n, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(n, 1, 1, -1), groups=n)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(n, 1, -1, 1), groups=n)
    return flat.reshape(n, 1, height, width)


# A batch's uniform draw has DRAW_COLUMNS columns, one row per sample; RobustDraw.of reads them.
# The column of each parameter and the width are part of what a seed means: a resumed or repeated
# run replays its augmentations only if both stay as they are (the last column is drawn, unused).
DRAW_COLUMNS = 20


@dataclass(frozen=True)
class RobustDraw:
    """The robust recipe's parameters of a batch, one value per sample (tensors of length B; shift [B, 2])."""

    angle: torch.Tensor  # radians
    zoom: torch.Tensor
    aspect: torch.Tensor
    shift: torch.Tensor  # (x, y) in grid units
    noise: torch.Tensor  # bool: whether Gaussian noise is added
    noise_variance: torch.Tensor
    blur_sigma: torch.Tensor  # px; 0: no blur
    brightness: torch.Tensor  # factor; 1: unchanged
    contrast: torch.Tensor  # factor; 1: unchanged
    low_resolution: torch.Tensor  # bool: whether the image is simulated at a lower resolution
    low_resolution_factor: torch.Tensor  # of the side
    inverted_gamma: torch.Tensor  # bool
    inverted_gamma_exponent: torch.Tensor
    gamma: torch.Tensor  # bool
    gamma_exponent: torch.Tensor

    @classmethod
    def of(cls, draw: torch.Tensor, recipe: RobustRecipe) -> "RobustDraw":
        """The parameters that `draw` (uniform [B, DRAW_COLUMNS]) stands for under `recipe`."""
        column = draw.unbind(1)
        return cls(
            angle=(column[0] * 2 - 1) * math.radians(recipe.rotation_deg),
            zoom=_log_uniform(column[1], recipe.zoom),
            aspect=_log_uniform(column[2], recipe.aspect),
            shift=(draw[:, 3:5] * 2 - 1) * recipe.shift * 2,  # grid units span 2 per side
            noise=column[5] < recipe.p_noise,
            noise_variance=_uniform(column[6], recipe.noise_variance),
            blur_sigma=torch.where(column[7] < recipe.p_blur, _uniform(column[8], recipe.blur_sigma),
                                   torch.zeros_like(column[8])),
            brightness=torch.where(column[9] < recipe.p_brightness, _uniform(column[10], recipe.brightness),
                                   torch.ones_like(column[10])),
            contrast=torch.where(column[11] < recipe.p_contrast, _uniform(column[12], recipe.contrast),
                                 torch.ones_like(column[12])),
            low_resolution=column[13] < recipe.p_low_resolution,
            low_resolution_factor=_uniform(column[14], recipe.low_resolution),
            inverted_gamma_exponent=_uniform(column[15], recipe.gamma),
            inverted_gamma=column[16] < recipe.p_inverted_gamma,
            gamma_exponent=_uniform(column[17], recipe.gamma),
            gamma=column[18] < recipe.p_gamma,
        )


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """Per-sample values [B] shaped to broadcast over images [B, 1, H, W]."""
    return values.view(-1, 1, 1, 1)


def _robust_geometry(images: torch.Tensor, masks: torch.Tensor,
                     params: RobustDraw) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation, zoom, aspect and translation, on every sample."""
    # theta maps output coordinates to input ones: the inverse of magnifying by zoom * sqrt(aspect)
    # horizontally and zoom / sqrt(aspect) vertically, after rotating.
    sx, sy = 1 / (params.zoom * params.aspect.sqrt()), params.aspect.sqrt() / params.zoom
    cos, sin = torch.cos(params.angle), torch.sin(params.angle)
    shift = params.shift
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, shift[:, 0]], 1),
                         torch.stack([sin * sx, cos * sy, shift[:, 1]], 1)], 1)
    # What a zoomed-out or shifted film shows beyond the original frame: air, the darkest value
    # of the radiograph (a constant, as nnU-Net pads; its mean-grey 0 would be a band no film has,
    # and a network never shown air beside the body labels it lung on a wider field of view).
    air = _per_image(images.flatten(1).min(1).values)
    images, masks = _warp(images - air, masks, theta, "zeros")
    return images + air, masks


def _robust_noise_and_blur(images: torch.Tensor, params: RobustDraw, noise_seed: int) -> torch.Tensor:
    """Gaussian noise, then Gaussian blur, in standardised units."""
    noise_std = params.noise_variance.sqrt() * params.noise.to(images.dtype)
    noise_generator = torch.Generator(device=images.device).manual_seed(noise_seed)
    noise = torch.randn(images.shape, generator=noise_generator, device=images.device, dtype=images.dtype)
    images = images + noise * _per_image(noise_std)
    if bool((params.blur_sigma > 0).any()):
        images = _gaussian_blur(images, params.blur_sigma.to(images.dtype))
    return images


def _low_resolution(unit: torch.Tensor, params: RobustDraw) -> torch.Tensor:
    """The images drawn for it brought down to a share of the side (nearest) and back up (bicubic)."""
    chosen = params.low_resolution.tolist()
    if not any(chosen):
        return unit
    height, width = unit.shape[2:]
    resampled = []
    for index, (apply, factor) in enumerate(zip(chosen, params.low_resolution_factor.tolist())):
        image = unit[index:index + 1]
        if apply:
            small = (max(1, round(height * factor)), max(1, round(width * factor)))
            image = F.interpolate(F.interpolate(image, size=small, mode="nearest"), size=(height, width),
                                  mode="bicubic", align_corners=False).clamp(0, 1)
        resampled.append(image)
    return torch.cat(resampled)


def _robust_intensity(images: torch.Tensor, params: RobustDraw) -> torch.Tensor:
    """Brightness, contrast, resolution and the gammas, on [0, 1] by each image's range, clipped;
    returns the images in [0, 1] (module docstring: why not on the standardised image)."""
    flat = images.flatten(1)
    low, high = _per_image(flat.min(1).values), _per_image(flat.max(1).values)
    unit = (images - low) / (high - low).clamp_min(1e-6)
    unit = (unit * _per_image(params.brightness)).clamp(0, 1)
    mean = _per_image(unit.flatten(1).mean(1))
    unit = ((unit - mean) * _per_image(params.contrast) + mean).clamp(0, 1)
    unit = _low_resolution(unit, params)
    unit = torch.where(_per_image(params.inverted_gamma),
                       1 - (1 - unit).clamp_min(0) ** _per_image(params.inverted_gamma_exponent), unit)
    return torch.where(_per_image(params.gamma), unit.clamp_min(0) ** _per_image(params.gamma_exponent), unit)


def robust_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
                 recipe: RobustRecipe = ROBUST_RECIPE) -> tuple[torch.Tensor, torch.Tensor]:
    """The robust recipe on a batch (module docstring). All parameters of the batch are drawn at
    once on the host and staged to the device in one copy; noise is drawn on the device."""
    draw = torch.rand(images.shape[0], DRAW_COLUMNS, generator=generator)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    params = RobustDraw.of(draw.to(images.device, non_blocking=True), recipe)
    images, masks = _robust_geometry(images, masks, params)
    images = _robust_noise_and_blur(images, params, noise_seed)
    return _standardise(_robust_intensity(images, params)), masks
