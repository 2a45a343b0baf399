"""The only way the rest of cxrsweep makes a network: build_segmenter / build_translator.

Each architecture registers itself with its default hyper-parameters as data (the paper's),
so a sweep can list, override and record them without reaching into code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from errors import MissingInput, UserError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


class Registry:
    """A name -> factory mapping, filled by decorators in the architecture modules."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._package = package  # imported on first use so that its modules register themselves
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, defaults: dict[str, Any] | None = None, description: str = ""):
        def decorate(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, dict(defaults or {}), description)
            return factory

        return decorate

    def _load(self) -> None:
        importlib.import_module(self._package)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}") from None

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        entry = self.entry(name)
        return entry.factory(**{**entry.defaults, **kwargs})


SEGMENTERS = Registry("segmenter", "models.segmenters")
TRANSLATORS = Registry("translator", "models.translators")

register_segmenter = SEGMENTERS.register
register_translator = TRANSLATORS.register


def build_segmenter(name: str, width: float = 1.0, in_channels: int = 1, num_classes: int = 2,
                    **kwargs: Any) -> nn.Module:
    return SEGMENTERS.build(name, width=width, in_channels=in_channels, num_classes=num_classes, **kwargs)


def build_translator(name: str, **kwargs: Any) -> nn.Module:
    return TRANSLATORS.build(name, **kwargs)


def list_segmenters() -> list[str]:
    return SEGMENTERS.names()


def list_translators() -> list[str]:
    return TRANSLATORS.names()


def segmenter_defaults(name: str) -> dict[str, Any]:
    return dict(SEGMENTERS.entry(name).defaults)


def translator_defaults(name: str) -> dict[str, Any]:
    return dict(TRANSLATORS.entry(name).defaults)


# Keys every segmenter checkpoint carries (written by engine.runtime.checkpoints).
CHECKPOINT_KEYS = ("arch", "arch_kwargs", "state_dict", "config", "task", "image_size", "normalisation", "epoch")


def load_torch_file(path, what: str = "checkpoint") -> Any:
    """torch.load on the CPU, with errors that name the file: missing -> FileNotFoundError, unreadable -> ValueError."""
    import pickle
    from pathlib import Path

    import torch  # deferred: listing and building networks does not need it here

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: {what} not found")
    try:
        # weights_only: a checkpoint is tensors and plain Python values, and a file from
        # elsewhere (--segmenter, --init-weights, `cxrsweep segment`) must never run code on load.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: {what} holds more than tensors and plain values, which cxrsweep does not "
                        f"load (it could run code): {str(exc).strip().splitlines()[0]}") from None
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserError(f"{path}: not a readable PyTorch {what} ({exc})") from None


def read_segmenter_checkpoint(path) -> dict[str, Any]:
    """The checkpoint dict at `path`, checked for the keys needed to rebuild its network."""
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise UserError(f"{path}: not a cxrsweep segmenter checkpoint (missing {', '.join(missing)})")
    return checkpoint


def segmenter_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    model = build_segmenter(checkpoint["arch"], **checkpoint["arch_kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def load_segmenter(path) -> nn.Module:
    """Rebuild the network saved in a cxrsweep checkpoint (best.pt / last.pt), on the CPU, in eval mode."""
    return segmenter_from_checkpoint(read_segmenter_checkpoint(path)).eval()
