"""Building blocks the three segmenters share."""
from __future__ import annotations

from torch import nn

# Below this many channels a layer stops being able to represent anything useful.
MIN_CHANNELS = 4


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer at a width multiplier."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(MIN_CHANNELS, int(round(channels * width)))


def conv_bn_relu(in_channels: int, out_channels: int, batch_norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return layers


def conv_stack(in_channels: int, out_channels: int, n_convs: int, batch_norm: bool = True) -> nn.Sequential:
    """`n_convs` 3x3 convolutions, the first changing the channel count (a VGG stage without its pool)."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += conv_bn_relu(in_channels if i == 0 else out_channels, out_channels, batch_norm)
    return nn.Sequential(*layers)


def vgg_encoder(in_channels: int, stages, batch_norm: bool = True) -> nn.ModuleList:
    """The convolution stages of a VGG-style encoder, one per (channels, n_convs); pooling is left to the caller."""
    encoder = nn.ModuleList()
    for channels, n_convs in stages:
        encoder.append(conv_stack(in_channels, channels, n_convs, batch_norm))
        in_channels = channels
    return encoder


def init_weights(module: nn.Module) -> None:
    """He initialisation for ReLU networks trained from scratch (no pretrained weights here)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input(x, multiple: int, name: str) -> None:
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(f"{name}: input height and width must be multiples of {multiple}, got {height}x{width}")
