"""The three alternating steps of the proposed method: who gets gradients, who moves, who stays frozen."""
import pytest
import torch

from engine.evaluation.label_budget import label_plan
from engine.runtime.device import as_batch
from engine.transfer.dispatch import train_transfer
from engine.transfer.proposed.run import ProposedRun
from models.loading import TranslateThenSegment, load_transfer_model
from models.registry import read_segmenter_checkpoint


def snapshot(modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def changed(before, modules):
    after = [p.detach() for m in modules for p in m.parameters()]
    return any(not torch.equal(x, y) for x, y in zip(before, after))


@pytest.fixture(scope="module")
def translators_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("translators")


@pytest.fixture(params=["munit", "cyclegan"])
def run(request, make_cfg, data_for, segmenter_checkpoint, source, target, translators_dir, tmp_path):
    from engine.transfer.proposed.warmup import warmup_translator

    cfg = make_cfg(translator=request.param, label_fraction=50.0)
    translator_path = warmup_translator(cfg, source, target, translators_dir)  # cached after the first test
    data = data_for(cfg)
    return ProposedRun(cfg, data, label_plan(cfg, data), tmp_path / "run",
                       read_segmenter_checkpoint(segmenter_checkpoint), translator_path)


def batch(run):
    data = run.data
    a = as_batch(data.source_train_images[:4], run.device)
    b = as_batch(data.target_train_images[:4], run.device)
    return a, b


def test_discriminative_step_trains_discriminators_with_generators_frozen(run):
    translator = run.model.translator
    generators_before = snapshot(translator.generator_modules())
    discriminators_before = snapshot(translator.discriminator_modules())
    run.translation.discriminative_step(*batch(run))
    for p in translator.generator_parameters():
        assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None for p in translator.discriminator_parameters())
    assert changed(discriminators_before, translator.discriminator_modules())
    assert not changed(generators_before, translator.generator_modules())


def test_generative_step_trains_generators_with_discriminators_frozen(run):
    translator = run.model.translator
    generators_before = snapshot(translator.generator_modules())
    discriminators_before = snapshot(translator.discriminator_modules())
    segmenter_before = snapshot([run.model.segmenter])
    run.translation.generative_step(*batch(run))
    for p in translator.discriminator_parameters():
        assert not p.requires_grad and p.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in translator.generator_parameters())
    assert changed(generators_before, translator.generator_modules())
    assert not changed(discriminators_before, translator.discriminator_modules())
    assert not changed(segmenter_before, [run.model.segmenter])


def g_ba_modules(translator):
    """The parameters that make up G_BA: B's content encoder + A's decoder (MUNIT), gen_ba (CycleGAN)."""
    if hasattr(translator, "gen_ba"):
        return [translator.gen_ba]
    return [translator.auto_b.content, translator.auto_a.decoder]


def test_semantic_term_moves_its_discriminator_and_the_generators_never_the_segmenter(run):
    """The optional SeUDA term (w_semantic > 0): D_M learns source masks vs M_A(G_BA(b)); then
    G_BA learns to fool it through a frozen M_A, whose weights and mode are left as they were."""
    from engine.transfer.proposed.gan import SemanticAdversary

    semantic = SemanticAdversary(run.cfg.replace(w_semantic=1.0), run.device)
    translator, segmenter = run.model.translator, run.model.segmenter
    segmenter.train()
    generators_before = snapshot(translator.generator_modules())
    discriminator_before = snapshot([semantic.discriminator])
    segmenter_before = snapshot([segmenter])
    a, b = batch(run)
    masks = torch.from_numpy(run.data.source_train_masks[:4]).to(run.device)
    losses = semantic.step(translator, segmenter, run.translation.generator_optimizer, b, masks)
    assert set(losses) == {"SEM_d", "SEM_g"} and all(torch.isfinite(v) for v in losses.values())
    assert changed(discriminator_before, [semantic.discriminator])
    assert changed(generators_before, translator.generator_modules())
    assert not changed(segmenter_before, [segmenter])
    assert segmenter.training and all(p.requires_grad for p in segmenter.parameters())
    assert all(p.grad is None for p in segmenter.parameters())


@pytest.mark.parametrize("with_target_labels", [False, True])
def test_supervised_step_moves_g_ba_and_m_a_with_discriminators_frozen(run, with_target_labels):
    translator = run.model.translator
    g_ba_before = snapshot(g_ba_modules(translator))
    discriminators_before = snapshot(translator.discriminator_modules())
    segmenter_before = snapshot([run.model.segmenter])
    a, b = batch(run)
    a_masks = torch.from_numpy(run.data.source_train_masks[:4]).long()
    b_masks = torch.from_numpy(run.data.target_labelled_masks[:4]).long() if with_target_labels else None
    labelled = as_batch(run.data.target_labelled_images[:4], run.device) if with_target_labels else None
    losses = run.supervised_step(a, a_masks, labelled, b_masks)
    assert ("S_target" in losses) == with_target_labels
    for p in translator.discriminator_parameters():
        assert not p.requires_grad and p.grad is None
    assert changed(g_ba_before, g_ba_modules(translator))
    assert changed(segmenter_before, [run.model.segmenter])
    assert not changed(discriminators_before, translator.discriminator_modules())


def test_inference_on_target_images_goes_through_g_ba_then_m_a(make_cfg, data_for, segmenter_checkpoint,
                                                                 warmed_translator, tmp_path):
    cfg = make_cfg(selection="source")  # keeps the adapted model: the translate-first path under test
    result = train_transfer(cfg, data_for(cfg), tmp_path / "run", segmenter_checkpoint, warmed_translator)
    model = load_transfer_model(result.run_dir / "best.pt")
    calls = []
    translator, segmenter = model.translator, model.segmenter
    translator.auto_b.content.register_forward_hook(lambda m, i, o: calls.append("G_BA encoder (B content)"))
    translator.auto_a.decoder.register_forward_hook(lambda m, i, o: calls.append("G_BA decoder (A style)"))
    seen_by_segmenter = []

    def record_segmenter(module, inputs, output):
        calls.append("M_A")
        seen_by_segmenter.append(inputs[0])

    segmenter.register_forward_hook(record_segmenter)
    b = torch.from_numpy(data_for(cfg).target_test_images[:2])[:, None]
    with torch.no_grad():
        logits = model(b)
        translated = translator.translate_ba(b)
    assert calls[:3] == ["G_BA encoder (B content)", "G_BA decoder (A style)", "M_A"]
    assert torch.allclose(seen_by_segmenter[0], translated)
    assert logits.shape == (2, 2, b.shape[2], b.shape[3])
    # The same weights without the translator give another answer: the translator is really used.
    assert not torch.allclose(TranslateThenSegment(segmenter)(b), logits)
