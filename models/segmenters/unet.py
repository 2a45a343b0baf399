"""U-Net (Ronneberger et al., 2015) with batch norm: four down and four up stages."""
from __future__ import annotations

import torch
from torch import nn

from models.registry import register_segmenter
from models.segmenters.blocks import check_input, conv_stack, init_weights, scaled, vgg_encoder


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels: list[int], batch_norm: bool = True):
        super().__init__()
        self.depth = len(channels) - 1
        self.encoders = vgg_encoder(in_channels, [(c, 2) for c in channels], batch_norm)
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for deep, shallow in zip(channels[:0:-1], channels[-2::-1]):
            self.upsamplers.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            # The decoder sees the upsampled features concatenated with the skip connection.
            self.decoders.append(conv_stack(2 * shallow, shallow, 2, batch_norm))
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 2**self.depth, "unet")
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip connection
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.classifier(x)


@register_segmenter(
    "unet",
    defaults={"base_channels": 64, "depth": 4, "batch_norm": True},
    description="U-Net, batch norm, 4 down / 4 up stages, transposed-conv upsampling",
)
def build_unet(width: float = 1.0, in_channels: int = 1, num_classes: int = 2,
               base_channels: int = 64, depth: int = 4, batch_norm: bool = True) -> UNet:
    channels = [scaled(base_channels * 2**i, width) for i in range(depth + 1)]
    return UNet(in_channels, num_classes, channels, batch_norm)
