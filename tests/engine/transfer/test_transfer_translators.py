"""The translators as networks: registry, shapes, the terms of their objectives, the cycle path."""
import pytest
import torch

from models.registry import build_translator, list_translators, translator_defaults
from models.translators.munit import MUNITTranslator


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
    translator = build_translator("munit", width=4, residual=False)
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
