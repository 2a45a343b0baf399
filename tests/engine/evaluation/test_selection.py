"""Choosing the transfer epoch at 0 % target labels: the shape prior, the decision against no
adaptation, and the fallback when the translation destroys the target images."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from engine.data.transfer import transfer_data
from engine.evaluation.selection import ShapePrior, TargetSelection
from engine.transfer.dispatch import train_transfer
from engine.transfer.proposed.warmup import warmup_translator
from models.registry import read_segmenter_checkpoint
from models.translators.munit import MUNITTranslator
from protocol.run_dir import NO_ADAPTATION, TARGET_PLAUSIBILITY


def test_plausibility_is_high_for_lung_masks_and_low_for_the_known_failure_modes(source):
    masks = source.masks["lungs"]
    prior = ShapePrior.from_masks(masks[:6])
    held_out = masks[6:]
    lungs = prior.plausibility(held_out)
    size = held_out.shape[-1]
    y, x = np.mgrid[0:size, 0:size] / size
    body = (((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1)[None] & (held_out == 0)  # the body labelled
    band = held_out.copy()
    band[:, :, : size // 6] = 1  # a padding band along one side labelled lung
    noise = np.random.default_rng(0).random(held_out.shape) < 0.3
    assert lungs.min() > 0.6
    assert prior.plausibility(body).max() < 0.35
    assert (prior.plausibility(band) < lungs - 0.1).all()
    assert prior.plausibility(noise).max() < 0.35
    assert (prior.plausibility(np.zeros_like(held_out)) == 0).all()


def test_adaptation_is_kept_only_when_clearly_and_consistently_more_plausible(source, target):
    selection = TargetSelection(source.masks["lungs"], target.images, margin=0.02)
    none = np.array([0.6, 0.7, 0.5, 0.65, 0.55, 0.6])
    assert selection.decide(none + 0.1, none).keep_adaptation  # better on every image
    assert not selection.decide(none + 0.01, none).keep_adaptation  # below the margin
    assert not selection.decide(none, none).keep_adaptation
    one_lucky_image = none + np.array([0.6, -0.05, -0.05, -0.05, -0.05, 0.0])  # mean +0.067, by chance
    decision = selection.decide(one_lucky_image, none)
    assert decision.mean_gain > 0.02 and decision.lower_bound < 0 and not decision.keep_adaptation


def test_the_kept_epoch_is_the_latest_not_significantly_less_plausible_than_the_leader():
    leader = np.array([0.80, 0.75, 0.78, 0.70, 0.77, 0.74])
    assert TargetSelection.follows(leader, None)
    assert TargetSelection.follows(leader + 0.01, leader)  # a new leader
    assert TargetSelection.follows(leader + np.array([0.02, -0.03, 0.01, -0.02, 0.0, -0.01]), leader)  # within noise
    assert not TargetSelection.follows(leader - 0.1, leader)  # clearly worse on every image


@pytest.mark.parametrize("rule", ["harm", "strict"])
def test_a_translation_that_destroys_its_input_falls_back_to_no_adaptation(rule, make_cfg, source, mild_target,
                                                                           tmp_path, trained_segmenter_checkpoint,
                                                                           monkeypatch, caplog):
    # The harm guard (the default) on the fixed schedule's result, and the strict rule on the epoch
    # target plausibility follows.
    cfg = make_cfg(transfer_epochs=2, **({"selection": "target", "guard": "strict"} if rule == "strict" else {}))
    data = transfer_data(cfg, source, mild_target)
    translator = warmup_translator(cfg, source, mild_target, tmp_path / "translators")
    monkeypatch.setattr(MUNITTranslator, "translate_ba", lambda self, b: 3 * torch.randn_like(b))
    with caplog.at_level(logging.WARNING, logger="engine.transfer"):
        result = train_transfer(cfg, data, tmp_path / "run", trained_segmenter_checkpoint, translator)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selected_model"] == NO_ADAPTATION and result.best_epoch == 0
    if rule == "strict":
        assert summary["selection_criterion"] == TARGET_PLAUSIBILITY
        assert summary["selection_score"] == summary["no_adaptation_score"] > 0.6
        assert summary["selection_decision"]["mean_gain"] < -0.3  # the criterion saw the destruction
    else:
        evidence = summary["selection_decision"]["evidence"]
        assert "collapse" in summary["selection_rule"] and evidence["plausibility"]["change"] < -0.3
    assert any("falls back" in r.getMessage() for r in caplog.records)
    # What is kept and evaluated is exactly the source_only model: M_A on b, no translator.
    kept_checkpoint = read_segmenter_checkpoint(tmp_path / "run" / "best.pt")
    assert "translator" not in kept_checkpoint and kept_checkpoint["selected_model"] == NO_ADAPTATION
    baseline = train_transfer(cfg.replace(method="source_only"), data, tmp_path / "source_only",
                              trained_segmenter_checkpoint)
    assert result.test_jaccard_mean == baseline.test_jaccard_mean > 0.9
    kept = pd.read_parquet(tmp_path / "run" / "images.parquet")["jaccard"]
    assert kept.tolist() == pd.read_parquet(tmp_path / "source_only" / "images.parquet")["jaccard"].tolist()
    # ...and its best.pt records what source_only's does: the data this run saw (the target too,
    # which chose the fallback) and how the target images were prepared.
    baseline_checkpoint = read_segmenter_checkpoint(tmp_path / "source_only" / "best.pt")
    for record in ("data", "preprocessing"):
        assert kept_checkpoint[record] == baseline_checkpoint[record]
    assert set(kept_checkpoint["data"]) == set(data.fingerprints) and len(data.fingerprints) == 2
    # The samples still show the translation that was rejected.
    assert (tmp_path / "run" / "translations" / "b_to_a.png").is_file()


def test_the_papers_selection_keeps_the_adapted_model_without_a_fallback(make_cfg, source, mild_target, tmp_path,
                                                                          trained_segmenter_checkpoint):
    cfg = make_cfg(selection="source", guard="off")
    translator = warmup_translator(cfg, source, mild_target, tmp_path / "translators")
    train_transfer(cfg, transfer_data(cfg, source, mild_target), tmp_path / "run", trained_segmenter_checkpoint,
                   translator)
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    assert summary["selection_criterion"] == "source_val_jaccard" and summary["selected_model"] == "adapted"
    assert summary["no_adaptation_score"] is None and summary["best_epoch"] >= 1
    assert "translator" in read_segmenter_checkpoint(tmp_path / "run" / "best.pt")


def test_an_unknown_selection_is_refused(make_cfg):
    """Where the config is built, before any run starts."""
    with pytest.raises(ValueError, match="selection must be one of schedule, target, source, got 'test_labels'"):
        make_cfg(selection="test_labels")


def test_keep_best_counts_the_start_and_keeps_a_trained_epoch_only_when_clearly_better():
    """Labelled criteria: the start (M_A as it is) is a candidate; a trained epoch must beat it image by
    image with confidence, a positive mean on few images is not enough. The source criterion has no
    start to compare with."""
    from engine.evaluation.selection import KeepBest
    from protocol.run_dir import HELD_OUT_JACCARD, SOURCE_JACCARD

    start = np.array([0.80, 0.85, 0.90, 0.82])
    clearly = KeepBest(HELD_OUT_JACCARD)
    clearly.start(start)
    assert not clearly.consider(start - 0.05)  # worse than the start: not even followed
    assert clearly.consider(start + np.array([0.03, 0.04, 0.02, 0.03]))
    assert clearly.decide().keep_adaptation
    lucky = KeepBest(HELD_OUT_JACCARD)
    lucky.start(start)
    assert lucky.consider(start + np.array([0.12, -0.03, -0.02, 0.01]))  # a better mean, from one image
    decision = lucky.decide()
    assert decision.mean_gain > 0 and decision.lower_bound <= 0 and not decision.keep_adaptation
    worse = KeepBest(HELD_OUT_JACCARD)
    worse.start(start)
    assert not worse.consider(start - 0.1) and worse.decide().keep_adaptation is False
    source = KeepBest(SOURCE_JACCARD)
    source.start(start)
    assert source.consider(start - 0.1) and source.decide() is None
