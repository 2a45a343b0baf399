"""Unpaired image translators; importing this package registers them."""
from models.translators import cyclegan, munit  # noqa: F401  (registration side effects)
from models.translators.base import Translator

__all__ = ["Translator"]
