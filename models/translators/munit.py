"""The paper's shallow MUNIT-style translator (§V-C; Huang et al., 2018).

Each domain has a content encoder, a style encoder and a decoder. Generators have two layers in
the encoder and two in the decoder, discriminators two convolutions and one fully connected
layer, as the paper's GPU budget forced. The content code keeps half the resolution, so the
translation is local: anatomy cannot move far, which is what the segmenter downstream needs.

With `field_grid` (the default) the decoders do not draw the translated image: they draw a gain
and an offset per pixel, averaged over a field_grid x field_grid grid of cells and interpolated
back, and the translation is image * (1 + gain) + offset. A smooth intensity field can invert a
film, flatten a bias field or change its contrast, but it cannot redraw the anatomy, the framing
or the borders; a decoder that draws the image can, and its discriminators ask it to wherever the
target's films are framed differently from the source's (docs/adaptation.md). 0: the decoders
draw the image (the paper's translator).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.registry import register_translator
from models.translator_defaults import TRANSLATOR_DEFAULTS
from models.translators.base import Translator, zero_output_layer
from models.translators.losses import l1, lsgan_generator_loss


class ContentEncoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 7, padding=3, padding_mode="reflect"),
            nn.InstanceNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, padding_mode="reflect"),
            nn.InstanceNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.layers(image)


class StyleEncoder(nn.Module):
    """No normalisation here: instance norm would erase exactly the statistics that are style."""

    def __init__(self, width: int, style_dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 7, padding=3, padding_mode="reflect"),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, padding_mode="reflect"),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Linear(2 * width, style_dim)

    def forward(self, image: Tensor) -> Tensor:
        return self.project(self.layers(image).mean(dim=(2, 3)))


class AdaINDecoder(nn.Module):
    """Upsample, one convolution modulated by the style (AdaIN), one output convolution."""

    def __init__(self, width: int, style_dim: int, out_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(2 * width, width, 5, padding=2, padding_mode="reflect")
        self.norm = nn.InstanceNorm2d(width, affine=False)
        self.style_to_affine = nn.Sequential(
            nn.Linear(style_dim, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 2 * width)
        )
        # Intensities are standardised, not squashed into [-1, 1]: a linear output, no tanh.
        self.out = nn.Conv2d(width, out_channels, 7, padding=3, padding_mode="reflect")

    def forward(self, content: Tensor, style: Tensor) -> Tensor:
        hidden = self.norm(self.conv(F.interpolate(content, scale_factor=2, mode="nearest")))
        gamma, beta = self.style_to_affine(style).chunk(2, dim=1)
        hidden = hidden * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return self.out(F.relu(hidden))


class DomainAutoEncoder(nn.Module):
    """With `residual`, the decoder renders a correction added to the image whose content it
    decodes, and starts at zero: every generator is the identity until training moves it. With
    `field_grid` > 0 (which needs `residual`) the correction is a smooth gain and offset of the
    image's own intensities (the module docstring)."""

    def __init__(self, width: int, style_dim: int, residual: bool = False, field_grid: int = 0):
        super().__init__()
        if field_grid and not residual:
            raise ValueError("an intensity field (field_grid > 0) corrects the image it is drawn on: it needs "
                             "residual generators")
        self.content = ContentEncoder(width)
        self.style = StyleEncoder(width, style_dim)
        self.decoder = AdaINDecoder(width, style_dim, out_channels=2 if field_grid else 1)
        self.residual, self.field_grid = residual, field_grid
        if residual:
            zero_output_layer(self.decoder.out)

    def decode(self, content: Tensor, style: Tensor, encoded_image: Tensor) -> Tensor:
        """This domain's rendering of `content` (encoded from `encoded_image`) in `style`."""
        rendered = self.decoder(content, style)
        if self.field_grid:
            field = F.interpolate(F.adaptive_avg_pool2d(rendered, self.field_grid), size=encoded_image.shape[-2:],
                                  mode="bilinear", align_corners=False)
            gain, offset = field.chunk(2, dim=1)
            return encoded_image * (1 + gain) + offset
        return encoded_image + rendered if self.residual else rendered


class FCDiscriminator(nn.Module):
    """Two strided convolutions and one fully connected layer (the paper's D_A / D_B).

    The feature map is pooled to a fixed grid before the FC layer so one network serves every
    image size; the grid keeps a coarse layout, which a single global average would lose.
    """

    def __init__(self, width: int, grid: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.grid = grid
        self.score = nn.Linear(2 * width * grid * grid, 1)

    def forward(self, image: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(image), self.grid)
        return self.score(pooled.flatten(1))


class MUNITTranslator(Translator):
    # Defaults live in the registry entry below, as data.
    def __init__(self, *, width: int, style_dim: int, w_adv: float, w_recon: float, w_cycle: float,
                 w_style: float, w_content: float, w_identity: float, residual: bool, spectral_norm: bool,
                 r1_gamma: float, instance_noise: float, field_grid: int = 0):
        super().__init__()
        self.style_dim = style_dim
        self.weights = dict(adv=w_adv, recon=w_recon, cycle=w_cycle, style=w_style, content=w_content,
                            identity=w_identity)
        self.auto_a = DomainAutoEncoder(width, style_dim, residual, field_grid)
        self.auto_b = DomainAutoEncoder(width, style_dim, residual, field_grid)
        self.dis_a = FCDiscriminator(width)
        self.dis_b = FCDiscriminator(width)
        self.regularise_discriminators(spectral_norm=spectral_norm, r1_gamma=r1_gamma, instance_noise=instance_noise)

    def generator_modules(self) -> list[nn.Module]:
        return [self.auto_a, self.auto_b]

    def discriminator_modules(self) -> list[nn.Module]:
        return [self.dis_a, self.dis_b]

    def _fixed_style(self, like: Tensor) -> Tensor:
        # Deterministic translation uses the style prior's mean rather than the style of one
        # reference image: the paper names a single outlier reference as a failure mode.
        return like.new_zeros(like.shape[0], self.style_dim)

    def translate_ab(self, a: Tensor) -> Tensor:
        return self.auto_b.decode(self.auto_a.content(a), self._fixed_style(a), a)

    def translate_ba(self, b: Tensor) -> Tensor:
        return self.auto_a.decode(self.auto_b.content(b), self._fixed_style(b), b)

    def _random_style(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape[0], self.style_dim, device=like.device, dtype=like.dtype)

    def generator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        w = self.weights
        content_a, style_a_own = self.auto_a.content(a), self.auto_a.style(a)
        content_b, style_b_own = self.auto_b.content(b), self.auto_b.style(b)
        recon_a = self.auto_a.decode(content_a, style_a_own, a)
        recon_b = self.auto_b.decode(content_b, style_b_own, b)

        style_a_drawn, style_b_drawn = self._random_style(a), self._random_style(b)
        b_as_a = self.auto_a.decode(content_b, style_a_drawn, b)
        a_as_b = self.auto_b.decode(content_a, style_b_drawn, a)

        # Re-encode the translations: the cycle must go through them, not reuse the originals.
        content_b_again, style_a_again = self.auto_a.content(b_as_a), self.auto_a.style(b_as_a)
        content_a_again, style_b_again = self.auto_b.content(a_as_b), self.auto_b.style(a_as_b)
        cycle_a = self.auto_a.decode(content_a_again, style_a_own, a_as_b)
        cycle_b = self.auto_b.decode(content_b_again, style_b_own, b_as_a)

        terms = {
            "adv": w["adv"] * (lsgan_generator_loss(self.dis_a(b_as_a)) + lsgan_generator_loss(self.dis_b(a_as_b))),
            "recon": w["recon"] * (l1(recon_a, a) + l1(recon_b, b)),
            "style": w["style"] * (l1(style_a_again, style_a_drawn) + l1(style_b_again, style_b_drawn)),
            "content": w["content"] * (l1(content_a_again, content_a) + l1(content_b_again, content_b)),
            "cycle": w["cycle"] * (l1(cycle_a, a) + l1(cycle_b, b)),
        }
        if w["identity"] > 0:
            # An image already in the output domain passes unchanged through the translation used
            # at inference (Taigman et al., 2017; Zhu et al.'s identity term, relative to the cycle
            # weight): an inversion or any other needless rewrite of intensities costs here.
            terms["identity"] = w["identity"] * w["cycle"] * (l1(self.translate_ba(a), a) + l1(self.translate_ab(b), b))
        terms["total"] = sum(terms.values())
        return terms

    def discriminator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            b_as_a = self.auto_a.decode(self.auto_b.content(b), self._random_style(b), b)
            a_as_b = self.auto_b.decode(self.auto_a.content(a), self._random_style(a), a)
        return self.lsgan_discriminator_terms(a, b, b_as_a, a_as_b)


@register_translator(
    "munit",
    defaults=TRANSLATOR_DEFAULTS["munit"],
    description="shallow MUNIT: content/style split, 2+2-layer generators, 2-conv+FC discriminators, LSGAN",
)
def build_munit(**kwargs) -> MUNITTranslator:
    return MUNITTranslator(**kwargs)
