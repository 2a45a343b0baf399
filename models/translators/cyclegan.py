"""A CycleGAN-style translator (Zhu et al., 2017), kept shallow like the paper's MUNIT.

The proposed method is agnostic to the translator (§IV-C); this one has no content/style split,
so the cycle and identity terms alone keep the anatomy in place.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.registry import register_translator
from models.translator_defaults import TRANSLATOR_DEFAULTS
from models.translators.base import Translator, zero_output_layer
from models.translators.losses import l1, lsgan_generator_loss


def _conv_block(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 1,
                  padding_mode="reflect"),
        nn.InstanceNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_block(channels, channels, 3), nn.Conv2d(channels, channels, 3, padding=1,
                                  padding_mode="reflect"), nn.InstanceNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """With `residual`, the network renders a correction added to its input and starts at zero:
    the generator is the identity until training moves it."""

    def __init__(self, width: int, n_residual: int, residual: bool = False):
        super().__init__()
        self.layers = nn.Sequential(
            *_conv_block(1, width, 7),
            *_conv_block(width, 2 * width, 4, stride=2),
            *[ResidualBlock(2 * width) for _ in range(n_residual)],
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_conv_block(2 * width, width, 3),
            nn.Conv2d(width, 1, 7, padding=3, padding_mode="reflect"),
        )
        self.residual = residual
        if residual:
            zero_output_layer(self.layers[-1])

    def forward(self, image: Tensor) -> Tensor:
        rendered = self.layers(image)
        return image + rendered if self.residual else rendered


class PatchDiscriminator(nn.Module):
    """A 70x70-style PatchGAN, one score per patch."""

    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.InstanceNorm2d(2 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, 4, padding=1),
            nn.InstanceNorm2d(4 * width),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * width, 1, 4, padding=1),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.layers(image)


class FakePool:
    """Past translations shown to the discriminator, so it does not chase the latest generator.

    Its images and its random generator are training state: `state_dict` / `load_state_dict`
    carry both, so a resumed run draws exactly what an uninterrupted one would."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[Tensor] = []
        self._generator = torch.Generator().manual_seed(seed)

    def exchange(self, batch: Tensor) -> Tensor:
        if self.size == 0:
            return batch
        out = []
        for image in batch.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif float(torch.rand((), generator=self._generator)) < 0.5:
                slot = int(torch.randint(self.size, (), generator=self._generator))
                out.append(self.images[slot].to(image.device))
                self.images[slot] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"images": [image.detach().cpu() for image in self.images], "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.images = [image.clone() for image in state["images"]]
        self._generator.set_state(state["generator"])


class CycleGANTranslator(Translator):
    # Defaults live in the registry entry below, as data.
    def __init__(self, *, width: int, n_residual: int, w_adv: float, w_cycle: float, w_identity: float,
                 pool_size: int, residual: bool, spectral_norm: bool, r1_gamma: float, instance_noise: float):
        super().__init__()
        self.weights = dict(adv=w_adv, cycle=w_cycle, identity=w_identity)
        self.gen_ab = ResnetGenerator(width, n_residual, residual)
        self.gen_ba = ResnetGenerator(width, n_residual, residual)
        self.dis_a = PatchDiscriminator(width)
        self.dis_b = PatchDiscriminator(width)
        self.regularise_discriminators(spectral_norm=spectral_norm, r1_gamma=r1_gamma, instance_noise=instance_noise)
        self.pool_a, self.pool_b = FakePool(pool_size, seed=0), FakePool(pool_size, seed=1)

    def generator_modules(self) -> list[nn.Module]:
        return [self.gen_ab, self.gen_ba]

    def discriminator_modules(self) -> list[nn.Module]:
        return [self.dis_a, self.dis_b]

    def translate_ab(self, a: Tensor) -> Tensor:
        return self.gen_ab(a)

    def translate_ba(self, b: Tensor) -> Tensor:
        return self.gen_ba(b)

    def generator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        w = self.weights
        a_as_b, b_as_a = self.gen_ab(a), self.gen_ba(b)
        terms = {
            "adv": w["adv"] * (lsgan_generator_loss(self.dis_b(a_as_b)) + lsgan_generator_loss(self.dis_a(b_as_a))),
            "cycle": w["cycle"] * (l1(self.gen_ba(a_as_b), a) + l1(self.gen_ab(b_as_a), b)),
            # CycleGAN scales identity relative to the cycle weight.
            "identity": w["identity"] * w["cycle"] * (l1(self.gen_ba(a), a) + l1(self.gen_ab(b), b)),
        }
        terms["total"] = sum(terms.values())
        return terms

    def training_state(self) -> dict:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_training_state(self, state: dict) -> None:
        self.pool_a.load_state_dict(state["pool_a"])
        self.pool_b.load_state_dict(state["pool_b"])

    def discriminator_losses(self, a: Tensor, b: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            a_as_b = self.pool_b.exchange(self.gen_ab(a))
            b_as_a = self.pool_a.exchange(self.gen_ba(b))
        return self.lsgan_discriminator_terms(a, b, b_as_a, a_as_b)


@register_translator(
    "cyclegan",
    defaults=TRANSLATOR_DEFAULTS["cyclegan"],
    description="CycleGAN-style: shallow ResNet generators, PatchGAN discriminators, LSGAN, fake pool",
)
def build_cyclegan(**kwargs) -> CycleGANTranslator:
    return CycleGANTranslator(**kwargs)
