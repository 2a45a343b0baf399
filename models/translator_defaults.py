"""The translators' default hyper-parameters, as data. Importing this module stays light (no
torch): protocol.config reads it for RunConfig's translator field defaults.
"""
from __future__ import annotations

from typing import Any

# What both translators share: residual generators that start at the identity, the adversarial,
# cycle and identity weights, and the discriminators' regularisers (spectral normalisation, R1,
# instance noise).
SHARED: dict[str, Any] = dict(width=32, w_adv=10.0, w_cycle=10.0, w_identity=0.5, residual=True, spectral_norm=True,
                              r1_gamma=0.0, instance_noise=0.0)

TRANSLATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    # The authors' follow-up code: 32 channels, style 8, image reconstruction 10, style and content 1;
    # cycle 10 because the outputs must stay pixel-aligned. Generators that start at the identity,
    # adversarial 10 (theirs: 1), the identity term and spectral normalisation keep the game balanced
    # and the translation from rewriting what needs no rewriting (docs/transfer.md);
    # protocol.config.PAPER_TRANSFER restores the paper's settings.
    # Its decoders draw a smooth gain and offset of the image on an 8 x 8 grid, not the image: on
    # both design phantom regimes the drawn image moved the anatomy where the field does not
    # (models/translators/munit.py, docs/adaptation.md).
    "munit": {**SHARED, "style_dim": 8, "w_recon": 10.0, "w_style": 1.0, "w_content": 1.0, "field_grid": 8},
    # Zhu et al.'s defaults, with two residual blocks instead of nine to stay as shallow as the MUNIT;
    # residual generators, the adversarial weight and the discriminators' regularisers as for the MUNIT.
    "cyclegan": {**SHARED, "n_residual": 2, "pool_size": 50},
}

DEFAULT_TRANSLATOR = "munit"

# A translator argument set by a RunConfig field of another name; every other argument that
# names a RunConfig field is set by that field, the rest keep their defaults.
CONFIG_FIELD_OF_ARGUMENT = {"width": "translator_width", "residual": "residual_generators",
                            "field_grid": "translator_field_grid"}


# Arguments added after translators and configs were saved, with the value those saved ones ran
# with (not today's default): a MUNIT saved before the intensity field existed drew the image.
ARGUMENTS_BEFORE_THEY_EXISTED: dict[str, dict[str, Any]] = {"munit": {"field_grid": 0}}


def with_arguments_saved_before_they_existed(translator: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` (a saved translator's keyword arguments) completed with the values of
    ARGUMENTS_BEFORE_THEY_EXISTED it lacks."""
    return {**ARGUMENTS_BEFORE_THEY_EXISTED.get(translator, {}), **arguments}


def config_field(argument: str) -> str:
    return CONFIG_FIELD_OF_ARGUMENT.get(argument, argument)


def config_default(field: str) -> Any:
    """The default of a RunConfig translator field: the default translator's argument."""
    arguments = {config_field(name): value for name, value in TRANSLATOR_DEFAULTS[DEFAULT_TRANSLATOR].items()}
    return arguments[field]
