"""SegNet (Badrinarayanan et al., 2017): a VGG-16 encoder whose max-pooling indices drive the
decoder's upsampling (MaxUnpool2d), followed by trainable convolutions."""
from __future__ import annotations

import torch
from torch import nn

from models.registry import register_segmenter
from models.segmenters.blocks import check_input, conv_bn_relu, init_weights, scaled, vgg_encoder

VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class SegNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stages: list[tuple[int, int]], batch_norm: bool = True):
        super().__init__()
        self.encoders = vgg_encoder(in_channels, stages, batch_norm)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        # The decoder mirrors the encoder: each stage keeps its width and its last
        # convolution maps to the width of the next-shallower stage.
        self.decoders = nn.ModuleList()
        for i in range(len(stages) - 1, -1, -1):
            channels, n_convs = stages[i]
            out = stages[i - 1][0] if i > 0 else stages[0][0]
            layers: list[nn.Module] = []
            for j in range(n_convs):
                layers += conv_bn_relu(channels, out if j == n_convs - 1 else channels, batch_norm)
            self.decoders.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(stages[0][0], num_classes, 3, padding=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, 2 ** len(self.encoders), "segnet")
        indices, sizes = [], []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append(x.shape)
            x, index = self.pool(x)
            indices.append(index)
        for decoder in self.decoders:
            x = decoder(self.unpool(x, indices.pop(), output_size=sizes.pop()))
        return self.classifier(x)


@register_segmenter(
    "segnet",
    defaults={"stages": VGG16_STAGES, "batch_norm": True},
    description="SegNet, VGG-16 encoder with batch norm, max-unpooling decoder",
)
def build_segnet(width: float = 1.0, in_channels: int = 1, num_classes: int = 2,
                 stages=VGG16_STAGES, batch_norm: bool = True) -> SegNet:
    return SegNet(in_channels, num_classes, [(scaled(c, width), n) for c, n in stages], batch_norm)
