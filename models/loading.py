"""A checkpoint as a runnable network: M_A from a supervised run's best.pt, and the composite
translate-then-segment model M_A(G_BA(.)) from a transfer run's."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from errors import UserError
from models.registry import build_translator, load_torch_file, read_segmenter_checkpoint, segmenter_from_checkpoint
from models.translator_defaults import with_arguments_saved_before_they_existed
from models.translators.base import Translator


class TranslateThenSegment(nn.Module):
    """The model applied to target images: M_A(G_BA(b)), or M_A(b) when there is no translator."""

    def __init__(self, segmenter: nn.Module, translator: Translator | None = None):
        super().__init__()
        self.segmenter = segmenter
        self.translator = translator

    def forward(self, target_images: Tensor) -> Tensor:
        if self.translator is not None:
            target_images = self.translator.translate_ba(target_images)
        return self.segmenter(target_images)


def load_translator(path: str | Path) -> tuple[Translator, dict]:
    """(translator in eval mode on the CPU, its checkpoint dict) from a warm-up or transfer checkpoint."""
    return translator_from(load_torch_file(path, "translator checkpoint"), path)


def translator_from(payload: Any, path: str | Path) -> tuple[Translator, dict]:
    """`load_translator` for a checkpoint already read from `path` (named in errors)."""
    if isinstance(payload, dict) and isinstance(payload.get("translator"), dict):
        payload = payload["translator"]  # a transfer run's checkpoint carries its translator inside
    missing = [k for k in ("translator", "kwargs", "state_dict") if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise UserError(f"{path}: not a cxrsweep translator checkpoint (missing {', '.join(missing)})")
    kwargs = with_arguments_saved_before_they_existed(payload["translator"], payload["kwargs"])
    translator = build_translator(payload["translator"], **kwargs)
    translator.load_state_dict(payload["state_dict"])
    return translator.eval(), payload


def checkpoint_arch(checkpoint: dict) -> str:
    """What network a checkpoint holds, in words: M_A's architecture, behind G_BA for a transfer
    run's best.pt."""
    if "translator" in checkpoint:
        return f"{checkpoint['translator']['translator']} G_BA + {checkpoint['arch']}"
    return checkpoint["arch"]


def _translate_then_segment(checkpoint: dict, path: str | Path) -> TranslateThenSegment:
    translator = translator_from(checkpoint, path)[0] if "translator" in checkpoint else None
    return TranslateThenSegment(segmenter_from_checkpoint(checkpoint), translator)


def load_transfer_model(path: str | Path) -> TranslateThenSegment:
    """The model a transfer run's best.pt applies to target images, on the CPU, in eval mode."""
    return _translate_then_segment(read_segmenter_checkpoint(path), path).eval()


def load_network(path: str | Path) -> tuple[nn.Module, dict]:
    """(network on the CPU in eval mode, its checkpoint dict): M_A for a supervised run's best.pt,
    M_A(G_BA(.)) for a transfer run's (target images go through G_BA before M_A, as in training)."""
    checkpoint = read_segmenter_checkpoint(path)
    model = _translate_then_segment(checkpoint, path) if "translator" in checkpoint else \
        segmenter_from_checkpoint(checkpoint)
    return model.eval(), checkpoint
