"""The proposed method fused (engine.fused.proposed): runs of several label fractions trained as one
computation against the same runs alone (train_transfer): the CPU's member-by-member step bit-exact,
the GPU's vmapped step (run here on the CPU) within rounding; a member that fails, fails alone."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from engine.fused.proposed import FusedProposedStep
from engine.fused.supervised import Member, train_fused
from engine.transfer.dispatch import proposed_run, train_transfer
from protocol.run_dir import RESULT_JSON
from sweep.fusing import group_key

EPOCHS = 3
FRACTIONS = [0.0, 50.0, 100.0, 50.0]
SHORT = 3  # this member trains on 4 source and 4 target images: one step an epoch where the others take two


def _data(cfg, data_for, k: int):
    data = data_for(cfg)
    if k == SHORT:
        data.source_train_images, data.source_train_masks = data.source_train_images[:4], data.source_train_masks[:4]
        data.target_train_images = data.target_train_images[:4]
    return data


def _member(cfg, data, run_dir, segmenter, translator) -> Member:
    return Member(cfg, None, run_dir, trainer=lambda: proposed_run(cfg, data, run_dir, segmenter, translator),
                  step=FusedProposedStep)


def _configs(make_cfg):
    return [make_cfg(method="proposed", label_fraction=fraction, transfer_epochs=EPOCHS) for fraction in FRACTIONS]


@pytest.fixture(scope="module")
def alone(tmp_path_factory, source, target, segmenter_checkpoint, warmed_translator):
    from engine.data.transfer import transfer_data
    from tests.engine.conftest import tiny_config

    root = tmp_path_factory.mktemp("alone")
    configs = _configs(tiny_config)
    results = [train_transfer(cfg, _data(cfg, lambda c: transfer_data(c, source, target), k), root / str(k),
                              segmenter_checkpoint, warmed_translator) for k, cfg in enumerate(configs)]
    return root, results


def _fused(make_cfg, data_for, segmenter_checkpoint, warmed_translator, root, grouped):
    configs = _configs(make_cfg)
    members = [_member(cfg, _data(cfg, data_for, k), root / str(k), segmenter_checkpoint, warmed_translator)
               for k, cfg in enumerate(configs)]
    return members, train_fused(members, grouped=grouped)


def test_fused_proposed_runs_are_their_runs_alone_on_the_cpu(alone, make_cfg, data_for, segmenter_checkpoint,
                                                             warmed_translator, tmp_path):
    root, separate = alone
    members, together = _fused(make_cfg, data_for, segmenter_checkpoint, warmed_translator, tmp_path, grouped=False)
    for k, (one, result) in enumerate(zip(separate, together)):
        assert not isinstance(result, BaseException), result
        assert result.history[0]["fused_members"] == len(FRACTIONS)
        for a, b in zip(one.history, result.history):
            # Every loss term and score of every epoch: the same numbers (timings and file sizes aside;
            # the files are compared below).
            same = {key for key in a if not key.endswith("_s") and key not in ("epoch_s", "checkpoint_bytes")}
            assert {key: a[key] for key in same} == {key: b[key] for key in same}, (FRACTIONS[k], a, b)
        assert (one.best_epoch, one.test_jaccard_mean, one.val_jaccard) == \
            (result.best_epoch, result.test_jaccard_mean, result.val_jaccard), FRACTIONS[k]
        # Where each run stopped, as its last.pt holds it: M_A, the translator, the three Adams
        # (moments and per-parameter step counts), the random stream and the selection's state.
        last = [torch.load(folder / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
                for folder in (root / str(k), members[k].run_dir)]
        for part in ("state_dict", "translator", "segmenter_optimizer", "translation_optimizers", "rng", "keeper",
                     "best_epoch", "best"):
            _assert_same(last[0][part], last[1][part], f"{FRACTIONS[k]} % {part}")
        rows = [pd.read_parquet(folder / "images.parquet") for folder in (root / str(k), members[k].run_dir)]
        assert rows[0].equals(rows[1]), FRACTIONS[k]
        summaries = [json.loads((folder / RESULT_JSON).read_text()) for folder in (root / str(k), members[k].run_dir)]
        assert summaries[0]["selected_model"] == summaries[1]["selected_model"]
    # The members are different runs: 0 % trains without target labels, 100 % with every one.
    assert "S_target" not in together[0].history[0] and "S_target" in together[2].history[0]


def test_fused_proposed_runs_vmapped_stay_within_rounding(alone, make_cfg, data_for, segmenter_checkpoint,
                                                          warmed_translator, tmp_path):
    """The GPU's step, here on the CPU: one vmapped computation, whose random styles vmap draws
    per member (not a run alone's draws), so the numbers move by what a style draw moves."""
    _, separate = alone
    _, together = _fused(make_cfg, data_for, segmenter_checkpoint, warmed_translator, tmp_path, grouped=True)
    for k, (one, result) in enumerate(zip(separate, together)):
        assert not isinstance(result, BaseException), result
        for a, b in zip(one.history, result.history):
            assert abs(a["S_source"] - b["S_source"]) <= 1e-3 and abs(a["D_total"] - b["D_total"]) <= 1e-2, \
                (FRACTIONS[k], a, b)
        # Scored on two held-out 32 px images, where one pixel is about 1e-3 of Jaccard.
        assert abs(one.test_jaccard_mean - result.test_jaccard_mean) <= 0.01, (FRACTIONS[k], one, result)


def test_a_diverging_member_fails_alone(alone, make_cfg, data_for, segmenter_checkpoint, warmed_translator, tmp_path):
    """A member whose losses go NaN (a corrupt target image here) is recorded failed with the
    reason; the members fused with it end exactly where they end alone."""
    _, separate = alone
    configs = _configs(make_cfg)
    data = [_data(cfg, data_for, k) for k, cfg in enumerate(configs)]
    data[1].target_train_images[0] = float("nan")
    members = [_member(cfg, d, tmp_path / str(k), segmenter_checkpoint, warmed_translator)
               for k, (cfg, d) in enumerate(zip(configs, data))]
    results = train_fused(members, grouped=False)
    assert isinstance(results[1], RuntimeError) and "not finite" in str(results[1]), results[1]
    for k in (0, 2, SHORT):
        assert [h["S_source"] for h in results[k].history] == [h["S_source"] for h in separate[k].history]
        assert results[k].test_jaccard_mean == separate[k].test_jaccard_mean


def test_a_fused_proposed_group_resumes_from_each_members_checkpoint(alone, make_cfg, data_for, segmenter_checkpoint,
                                                                    warmed_translator, tmp_path):
    """Stopped after 1 of 3 epochs (each member's last.pt) and trained on to 3, fused again, every
    member ends where its uninterrupted run alone ends: weights, the three Adams, the random
    stream and the selection come back from its own file."""
    _, separate = alone
    for epochs in (1, EPOCHS):
        configs = [cfg.replace(transfer_epochs=epochs) for cfg in _configs(make_cfg)]
        members = [_member(cfg, _data(cfg, data_for, k), tmp_path / str(k), segmenter_checkpoint, warmed_translator)
                   for k, cfg in enumerate(configs)]
        results = train_fused(members, grouped=False)
    for k, (one, result) in enumerate(zip(separate, results)):
        assert json.loads((members[k].run_dir / RESULT_JSON).read_text())["epochs_trained"] == EPOCHS - 1
        assert [h["S_source"] for h in result.history] == [h["S_source"] for h in one.history], FRACTIONS[k]
        assert (result.best_epoch, result.test_jaccard_mean) == (one.best_epoch, one.test_jaccard_mean)


def test_proposed_runs_fuse_by_target(make_cfg):
    from protocol.grid import build_grid

    grid = build_grid("all", make_cfg(), models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0, 1],
                      methods=["proposed"], fractions=[0, 50, 100], targets=["montgomery", "shenzhen"])
    keys = {}
    for spec in grid.trials.values():
        if spec.kind == "transfer":
            keys.setdefault(spec.config.target, set()).add(group_key(spec))
    assert {target: len(found) for target, found in keys.items()} == {"montgomery": 1, "shenzhen": 1}
    assert keys["montgomery"] != keys["shenzhen"] and None not in keys["montgomery"]


def _assert_same(one, two, where: str) -> None:
    """Nested checkpoint contents equal: tensors element for element, the rest by value."""
    if isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            _assert_same(one[key], two[key], f"{where}/{key}")
    elif isinstance(one, (list, tuple)):
        assert len(one) == len(two), where
        for i, (a, b) in enumerate(zip(one, two)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(one, torch.Tensor):
        assert torch.equal(one, two), where
    else:
        assert one == two, where
