"""The mask discriminator of the optional semantic-aware adversarial term (SeUDA, Chen et al., 2018)."""
from __future__ import annotations

from models.translators.base import with_spectral_norm
from models.translators.munit import FCDiscriminator


class MaskDiscriminator(FCDiscriminator):
    """D_M: tells a source label mask from the segmenter's soft prediction (foreground probability)
    on a translated target image. Same shape as the paper's image discriminators: two strided
    convolutions and a fully connected layer over a coarse grid, so it judges the layout of the
    lung fields (two lungs, where and how large), not their boundary pixels."""

    def __init__(self, width: int, spectral_norm: bool):
        super().__init__(width)
        if spectral_norm:
            with_spectral_norm(self)
