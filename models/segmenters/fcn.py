"""FCN-8s (Long et al., 2015): a VGG-16 encoder, its fully connected layers as convolutions,
and class scores fused from pool5, pool4 and pool3 on the way back to full resolution.

Two departures from the original, both because nothing here starts from ImageNet weights:
batch norm after each convolution (a 16-layer VGG trained from scratch with Adam at 1e-4
barely moves without it), and a slimmer head (3x3 fc6 with 1024 channels at width 1
instead of 7x7 with 4096), which keeps the parameter count near U-Net's.
"""
from __future__ import annotations

import torch
from torch import nn

from models.registry import register_segmenter
from models.segmenters.blocks import check_input, init_weights, scaled, vgg_encoder
from models.segmenters.segnet import VGG16_STAGES


def _bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make a transposed convolution start as bilinear upsampling (as in FCN)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (grid - center).abs() / factor
    kernel = profile[:, None] * profile[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight

def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(_bilinear_kernel(channels, 2 * factor))
    return up

class FCN8s(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stages: list[tuple[int, int]], fc_channels: int,
                 fc_kernel: int = 3, dropout: float = 0.5, batch_norm: bool = True):
        super().__init__()
        self.stages = vgg_encoder(in_channels, stages, batch_norm)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.head = nn.Sequential(
            nn.Conv2d(stages[-1][0], fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, num_classes, 1),
        )
        self.score_pool4 = nn.Conv2d(stages[3][0], num_classes, 1)
        self.score_pool3 = nn.Conv2d(stages[2][0], num_classes, 1)
        init_weights(self)
        # FCN starts its skip scores at zero so that training begins from the coarse FCN-32s path.
        for score in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        # Created after init_weights so that they keep their bilinear start.
        self.up2_from_pool5 = _upsampler(num_classes, 2)
        self.up2_from_pool4 = _upsampler(num_classes, 2)
        self.up8_to_input = _upsampler(num_classes, 8)
        self.downsampling = 2 ** len(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.downsampling, "fcn")
        pooled = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        score = self.head(pooled[4])
        score = self.up2_from_pool5(score) + self.score_pool4(pooled[3])
        score = self.up2_from_pool4(score) + self.score_pool3(pooled[2])
        return self.up8_to_input(score)

@register_segmenter(
    "fcn",
    defaults={"stages": VGG16_STAGES, "fc_channels": 1024, "fc_kernel": 3, "dropout": 0.5, "batch_norm": True},
    description="FCN-8s, VGG-16 encoder with batch norm, scores fused from pool3 and pool4",
)
def build_fcn(width: float = 1.0, in_channels: int = 1, num_classes: int = 2, stages=VGG16_STAGES,
              fc_channels: int = 1024, fc_kernel: int = 3, dropout: float = 0.5, batch_norm: bool = True) -> FCN8s:
    if len(stages) != 5:
        raise ValueError(f"fcn: FCN-8s fuses pool3 and pool4 of a 5-stage encoder, got {len(stages)} stages")
    return FCN8s(in_channels, num_classes, [(scaled(c, width), n) for c, n in stages],
                 scaled(fc_channels, width), fc_kernel, dropout, batch_norm)
