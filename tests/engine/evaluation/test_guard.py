"""The harm guard (engine/evaluation/guard.py): a transfer run's fixed-schedule result is kept unless the
label-free evidence shows it harmful, and a method that only harms returns M_A and says so."""
import json

import numpy as np
import pytest
import torch

from engine.data.transfer import transfer_data
from engine.evaluation.guard import GuardSignals, HarmGuard, compare
from engine.evaluation.label_budget import label_plan
from engine.runtime.device import resolve_device
from engine.transfer.dispatch import train_transfer
from models.loading import TranslateThenSegment
from models.registry import read_segmenter_checkpoint, segmenter_from_checkpoint
from protocol.run_dir import NO_ADAPTATION


def test_a_loss_is_harm_only_when_it_is_beyond_the_tolerance_and_significant():
    m_a = np.array([0.90, 0.92, 0.88, 0.91, 0.93, 0.89])
    assert compare(m_a - 0.03, m_a, tolerance=0.01).harmful  # every image loses 3 points
    assert not compare(m_a - 0.005, m_a, tolerance=0.01).harmful  # within the tolerance
    noisy = m_a + np.array([-0.20, 0.15, -0.10, 0.12, -0.08, 0.05])  # mean -0.01, all over the place
    assert compare(noisy, m_a, tolerance=0.005).upper_bound > 0 and not compare(noisy, m_a, tolerance=0.005).harmful
    gain = compare(m_a + 0.02, m_a, tolerance=0.01)
    assert not gain.harmful and gain.change == pytest.approx(0.02) and gain.lower_bound > 0


class Inverted(torch.nn.Module):
    """A segmenter whose answers are the opposite of M_A's: lung where M_A sees body, and so on."""

    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images):
        return self.segmenter(images).flip(1)


def test_the_guard_keeps_m_a_against_itself_and_refuses_its_opposite(make_cfg, source, mild_target,
                                                                     trained_segmenter_checkpoint):
    cfg = make_cfg(method="self_training")
    data = transfer_data(cfg, source, mild_target)
    device = resolve_device("cpu")
    guard = HarmGuard(cfg, data, label_plan(cfg, data), device)
    segmenter = segmenter_from_checkpoint(read_segmenter_checkpoint(trained_segmenter_checkpoint))
    m_a = TranslateThenSegment(segmenter)
    same = guard.decide(TranslateThenSegment(segmenter_from_checkpoint(
        read_segmenter_checkpoint(trained_segmenter_checkpoint))), m_a)
    assert same.keep_adaptation and same.rule == "no harm found"
    assert same.evidence["source"]["change"] == 0 and same.evidence["plausibility"]["change"] == 0
    opposite = guard.decide(TranslateThenSegment(Inverted(segmenter)), m_a)
    assert not opposite.keep_adaptation
    assert opposite.rule == "harm (source, collapse)"
    assert opposite.evidence["source"]["change"] < -0.3


def test_every_signal_is_per_image_and_reads_no_target_label(make_cfg, source, mild_target,
                                                            trained_segmenter_checkpoint):
    cfg = make_cfg(method="self_training")
    data = transfer_data(cfg, source, mild_target)
    blind = transfer_data(cfg, source, mild_target)
    blind.target_val_masks = np.full_like(blind.target_val_masks, 1)  # labels the signals must not read
    model = TranslateThenSegment(segmenter_from_checkpoint(read_segmenter_checkpoint(trained_segmenter_checkpoint)))
    device = resolve_device("cpu")
    seen, again = GuardSignals(data, device)(model), GuardSignals(blind, device)(model)
    for name, values in seen.values.items():
        assert values.shape == ((len(data.source_val_images),) if name == "source" else (len(data.target_val_images),))
        assert np.array_equal(values, again.values[name]), name


@pytest.mark.parametrize("method,fraction,budget", [
    ("self_training", 0.0, "honest"), ("finetune", 100.0, "honest"), ("proposed", 0.0, "honest"),
    ("finetune", 100.0, "paper"), ("proposed", 100.0, "paper")])
def test_a_method_that_only_harms_returns_m_a_and_says_so(method, fraction, budget, make_cfg, source, mild_target,
                                                         trained_segmenter_checkpoint, tmp_path, caplog):
    from engine.transfer.proposed.warmup import warmup_translator

    # An absurd learning rate wrecks the segmenter from its first step: the schedule ends on a wreck,
    # and under the paper's budget no trained epoch beats M_A on the labelled validation images.
    cfg = make_cfg(method=method, label_fraction=fraction, label_budget=budget, epochs=2, transfer_epochs=2,
                   self_training_epochs=2, lr=5.0)
    assert (cfg.selection, cfg.guard) == ("schedule", "harm")
    data = transfer_data(cfg, source, mild_target)
    translator = warmup_translator(cfg, source, mild_target, tmp_path / "translators") if method == "proposed" else None
    result = train_transfer(cfg, data, tmp_path / "run", trained_segmenter_checkpoint, translator)
    as_is = train_transfer(cfg.replace(method="source_only", label_fraction=0.0), data, tmp_path / "source_only",
                           trained_segmenter_checkpoint)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selected_model"] == NO_ADAPTATION and result.best_epoch == 0
    decision = summary["selection_decision"]
    assert decision["keep_adaptation"] is False and decision["mean_gain"] <= 0
    if budget == "honest":
        assert summary["selection_rule"].startswith("fixed schedule; harm guard: harm (")
        assert summary["selection_rule"].endswith(", fell back to M_A")
        assert decision["evidence"]["source"]["harmful"]
        assert "refused by the harm guard" in caplog.text
    else:  # the labelled images chose the epoch, and none beat M_A on them
        assert summary["selection_rule"] == ("best epoch by target_val_jaccard; harm guard: no trained epoch beat "
                                             "M_A by target_val_jaccard, fell back to M_A")
    assert result.test_jaccard_mean == pytest.approx(as_is.test_jaccard_mean)
    kept = read_segmenter_checkpoint(tmp_path / "run" / "best.pt")["state_dict"]
    m_a = read_segmenter_checkpoint(trained_segmenter_checkpoint)["state_dict"]
    assert all(torch.equal(kept[name], m_a[name]) for name in m_a)


def test_a_sound_result_is_kept_by_the_schedule_and_the_guard(make_cfg, source, mild_target,
                                                             trained_segmenter_checkpoint, tmp_path):
    cfg = make_cfg(method="finetune", label_fraction=100.0, epochs=3, lr=1e-4)
    data = transfer_data(cfg, source, mild_target)
    result = train_transfer(cfg, data, tmp_path / "run", trained_segmenter_checkpoint)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selection_rule"] == "fixed schedule; harm guard: no harm found, kept"
    assert summary["selected_model"] == "adapted" and result.best_epoch == 3  # the schedule's last epoch
    assert summary["target_labels_used"] == data.n_labelled and summary["target_labels_selecting"] == 0


def test_the_strict_rule_stays_reachable(make_cfg, source, mild_target, trained_segmenter_checkpoint, tmp_path):
    cfg = make_cfg(method="finetune", label_fraction=100.0, epochs=2, lr=5.0, selection="target", guard="strict")
    data = transfer_data(cfg, source, mild_target)
    train_transfer(cfg, data, tmp_path / "run", trained_segmenter_checkpoint)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selection_criterion"] == "held_out_target_jaccard"
    assert summary["selection_rule"].startswith("best epoch by held_out_target_jaccard; strict guard: ")
    assert summary["selection_rule"].endswith(", fell back to M_A") and summary["selected_model"] == NO_ADAPTATION
