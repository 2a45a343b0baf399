"""The translators as networks: registry, shapes, the terms of their objectives, the cycle path."""
import pytest
import torch

from models.loading import translator_from
from models.registry import build_translator, list_translators, translator_defaults
from models.translators.munit import MUNITTranslator
from protocol.config import ConfigError, RunConfig, make_config, translator_arguments


def test_both_translators_are_registered_with_their_defaults_as_data():
    assert {"munit", "cyclegan"} <= set(list_translators())
    assert translator_defaults("munit")["w_recon"] == 10.0
    assert translator_defaults("cyclegan")["w_cycle"] == 10.0


@pytest.mark.parametrize("name", ["munit", "cyclegan"])
def test_translations_keep_the_image_shape_and_losses_are_finite(name):
    torch.manual_seed(0)
    translator = build_translator(name, width=4)
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    assert translator.translate_ab(a).shape == a.shape
    assert translator.translate_ba(b).shape == b.shape
    generator_terms = translator.generator_losses(a, b)
    discriminator_terms = translator.discriminator_losses(a, b)
    for terms in (generator_terms, discriminator_terms):
        assert torch.isfinite(terms["total"])
        parts = sum(v for k, v in terms.items() if k != "total")
        assert torch.allclose(terms["total"], parts)


def test_munit_generators_have_two_encoder_and_two_decoder_layers_and_discriminators_two_convs_one_fc():
    translator = build_translator("munit", width=4)
    assert isinstance(translator, MUNITTranslator)
    content_convs = [m for m in translator.auto_a.content.modules() if isinstance(m, torch.nn.Conv2d)]
    decoder_convs = [m for m in translator.auto_a.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    dis_convs = [m for m in translator.dis_a.modules() if isinstance(m, torch.nn.Conv2d)]
    dis_fcs = [m for m in translator.dis_a.modules() if isinstance(m, torch.nn.Linear)]
    assert (len(content_convs), len(decoder_convs), len(dis_convs), len(dis_fcs)) == (2, 2, 2, 1)


def test_munit_cycle_term_goes_through_the_translated_image():
    """Reusing the original content code (the follow-up code's bug) would make the cycle term
    blind to the B decoder; through the translation it is not. (Plain generators: residual ones
    start at the identity, where the L1 cycle term is exactly 0 and has no gradient yet.)"""
    torch.manual_seed(0)
    translator = build_translator("munit", width=4, residual=False, field_grid=0)
    a, b = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    torch.manual_seed(1)
    translator.generator_losses(a, b)["cycle"].backward()
    b_decoder_grad = [p.grad for p in translator.auto_b.decoder.parameters()]
    assert all(g is not None for g in b_decoder_grad)
    assert sum(float(g.abs().sum()) for g in b_decoder_grad) > 0
    assert torch.allclose(translator.cycle_aba(a), translator.translate_ba(translator.translate_ab(a)))


def test_munit_translation_is_deterministic_at_inference():
    translator = build_translator("munit", width=4).eval()
    b = torch.randn(1, 1, 32, 32)
    assert torch.equal(translator.translate_ba(b), translator.translate_ba(b))


def _scramble(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, the zero-initialised output layers included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def _steepness(field: torch.Tensor) -> float:
    """The largest change between neighbouring pixels, as a share of the field's range."""
    steepest = max(float(field.diff(dim=-1).abs().max()), float(field.diff(dim=-2).abs().max()))
    return steepest / float(field.max() - field.min())


@torch.no_grad()
def test_the_default_munit_draws_a_smooth_intensity_field_not_the_image():
    """With translator_field_grid (the default), whatever its weights, a decoder's translation is
    image * (1 + gain) + offset with a gain and an offset smooth over 8 x 8 cells: it can change
    intensities but draws no edge of its own. A decoder that draws the image (field_grid 0) draws
    pixel-sized detail from the same weights."""
    b = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for field_grid in (8, 0):
        translator = build_translator("munit", width=4, field_grid=field_grid)
        assert translator.auto_a.field_grid == field_grid
        assert torch.equal(translator.translate_ba(b), b)  # the identity before training
        _scramble(translator, 0)
        decoder = translator.auto_a
        content, style = translator.auto_b.content(b), torch.zeros(1, translator.style_dim)
        offset = decoder.decode(content, style, torch.zeros_like(b))[0, 0]
        gain = decoder.decode(content, style, torch.ones_like(b))[0, 0] - offset - 1
        if field_grid:
            assert torch.allclose(decoder.decode(content, style, b)[0, 0], b[0, 0] * (1 + gain) + offset, atol=1e-5)
            assert _steepness(offset) <= 1 / 6 and _steepness(gain) <= 1 / 6  # 8 pixels a cell
        else:
            assert _steepness(offset) > 1 / 3


def test_the_intensity_field_can_invert_a_film():
    translator = build_translator("munit", width=4).eval()
    with torch.no_grad():
        translator.auto_a.decoder.out.bias.copy_(torch.tensor([-2.0, 0.0]))  # gain -2: 1 + gain = -1
    b = torch.randn(2, 1, 32, 32)
    assert torch.allclose(translator.translate_ba(b), -b)


def test_the_paper_preset_draws_the_image_and_a_field_needs_residual_generators():
    assert translator_arguments(make_config("cpu"))["field_grid"] == 8
    assert translator_arguments(make_config("cpu", preset="paper"))["field_grid"] == 0
    assert build_translator("munit", width=4, field_grid=0).auto_a.field_grid == 0
    with pytest.raises(ConfigError, match="translator_field_grid"):
        RunConfig(residual_generators=False)
    RunConfig(residual_generators=False, translator_field_grid=0)
    RunConfig(translator="cyclegan", residual_generators=False)


def test_configs_and_translators_saved_before_the_field_existed_read_as_the_drawn_image():
    old = RunConfig().to_dict()
    del old["translator_field_grid"]
    assert RunConfig.from_dict(old).translator_field_grid == 0
    old_cyclegan = RunConfig(translator="cyclegan").to_dict()
    del old_cyclegan["translator_field_grid"]  # not a CycleGAN argument: today's default, nothing to upgrade
    assert RunConfig.from_dict(old_cyclegan).translator_field_grid == RunConfig().translator_field_grid
    drawn = build_translator("munit", width=4, field_grid=0)
    kwargs = {name: value for name, value in translator_arguments(make_config("cpu")).items() if name != "field_grid"}
    kwargs["width"] = 4
    loaded, _ = translator_from({"translator": "munit", "kwargs": kwargs, "state_dict": drawn.state_dict()}, "old.pt")
    assert loaded.auto_a.field_grid == 0
