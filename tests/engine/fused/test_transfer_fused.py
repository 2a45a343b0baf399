"""Table II's Trainer-shaped runs fused (engine.fused with engine.transfer.dispatch.transfer_trainer):
finetune, scratch and self-training runs of several label fractions trained fused against the
same runs alone (train_transfer): the CPU's member-by-member step bit-exact, the GPU's vmapped
step (run here on the CPU) within rounding."""
from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from engine.fused.supervised import Member, train_fused
from engine.transfer.dispatch import NotApplicable, train_transfer, transfer_trainer
from protocol.run_dir import RESULT_JSON
from sweep.fusing import group_key

EPOCHS = 5
RUNS = [("finetune", 50.0), ("finetune", 100.0), ("scratch", 50.0), ("scratch", 100.0), ("self_training", 0.0),
        ("self_training", 50.0)]


def _member(cfg, data, run_dir, segmenter) -> Member:
    return Member(cfg, None, run_dir, trainer=lambda: transfer_trainer(cfg, data, run_dir, segmenter))


def test_fused_baselines_match_their_runs_alone(make_cfg, data_for, trained_segmenter_checkpoint, tmp_path):
    segmenter_checkpoint = trained_segmenter_checkpoint  # finetune starts from an M_A that has learnt
    # Two groups, as the sweep forms them (sweep.fusing.group_key): the baselines, and the
    # self-training runs, whose epochs differ in length (source + pseudo-labelled + labelled images).
    configs = [make_cfg(method=method, label_fraction=fraction, epochs=EPOCHS, transfer_epochs=EPOCHS,
                       self_training_epochs=EPOCHS, lr=3e-3)
               for method, fraction in RUNS]
    data = [data_for(cfg) for cfg in configs]
    alone = [train_transfer(cfg, d, tmp_path / "alone" / str(k), segmenter_checkpoint)
             for k, (cfg, d) in enumerate(zip(configs, data))]
    # A finetune run at 0 % labels has nothing to train on: it fails alone, its siblings go on.
    empty = make_cfg(method="finetune", label_fraction=0.0, epochs=EPOCHS, transfer_epochs=EPOCHS,
                     self_training_epochs=EPOCHS, lr=3e-3)
    students = [k for k, (method, _) in enumerate(RUNS) if method == "self_training"]
    baselines = [k for k in range(len(RUNS)) if k not in students]
    assert len({len(data[k].source_train_images) + len(data[k].target_labelled_images) for k in students}) > 1

    def fused(root, grouped: bool):
        members = [_member(cfg, d, root / str(k), segmenter_checkpoint)
                   for k, (cfg, d) in enumerate(zip(configs, data))]
        empty_member = _member(empty, data_for(empty), root / "empty", segmenter_checkpoint)
        fused_baselines = train_fused([*(members[k] for k in baselines), empty_member], grouped=grouped)
        assert isinstance(fused_baselines[-1], NotApplicable), fused_baselines[-1]
        together = [None] * len(RUNS)
        for k, result in [*zip(baselines, fused_baselines),
                          *zip(students, train_fused([members[k] for k in students], grouped=grouped))]:
            assert not isinstance(result, BaseException), (RUNS[k], result)
            assert len(result.history) == EPOCHS
            rows_alone = pd.read_parquet(tmp_path / "alone" / str(k) / "images.parquet")
            rows_fused = pd.read_parquet(members[k].run_dir / "images.parquet")
            assert list(rows_alone.image_id) == list(rows_fused.image_id) and len(rows_fused) > 0
            summaries = [json.loads((folder / RESULT_JSON).read_text())
                         for folder in (tmp_path / "alone" / str(k), members[k].run_dir)]
            for field in ("selected_model", "label_budget", "n_train_labels", "val_split", "pseudo_labels"):
                assert summaries[0].get(field) == summaries[1].get(field), (RUNS[k], field)
            together[k] = result
        return together

    # On the CPU a fused member's arithmetic is its run's alone (engine.fused.stacking.grouped_on): every
    # epoch's loss and selection score, the kept epoch and its test score are the same numbers.
    together = fused(tmp_path / "fused", grouped=False)
    for k, (one, result) in enumerate(zip(alone, together)):
        assert one.test_jaccard_mean == result.test_jaccard_mean and one.best_epoch == result.best_epoch, RUNS[k]
        assert [(h["train_loss"], h["selection_score"]) for h in one.history] == \
            [(h["train_loss"], h["selection_score"]) for h in result.history], RUNS[k]
    # The members are different runs (finetune starts from M_A, scratch from random weights).
    assert together[0].history[0]["train_loss"] != together[2].history[0]["train_loss"]
    # The GPU's vmapped step, here on the CPU: within rounding.
    for k, (one, result) in enumerate(zip(alone, fused(tmp_path / "vmapped", grouped=True))):
        assert abs(one.test_jaccard_mean - result.test_jaccard_mean) <= 0.01, (RUNS[k], one, result)
        assert one.best_epoch == result.best_epoch, RUNS[k]
        curves = [(a["selection_score"], b["selection_score"]) for a, b in zip(one.history, result.history)]
        # Scored on one or two held-out 32 px images, where one pixel is about 3e-3 of Jaccard.
        assert max(abs(a - b) for a, b in curves) <= 0.01, (RUNS[k], curves)


def test_the_transfer_methods_fuse_by_kind_and_target(make_cfg):
    from protocol.grid import build_grid

    base = make_cfg()
    other = build_grid("all", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                       methods=["finetune", "self_training"], fractions=[50], targets=["shenzhen"])
    grid = build_grid("all", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0, 1],
                      methods=["proposed", "finetune", "scratch", "self_training", "source_only"],
                      fractions=[0, 50, 100])
    elsewhere = {group_key(s) for s in other.trials.values() if s.kind == "transfer"}
    assert len(elsewhere) == 2 and not elsewhere & {group_key(s) for s in grid.trials.values()}
    keys = {}
    for spec in grid.trials.values():
        keys.setdefault(group_key(spec), []).append(spec)
    def runs_of(method):
        return [s for s in grid.trials.values() if s.kind == "transfer" and s.config.method == method]

    # Fine-tuning replays the source images in its epochs and scratch does not: two groups, unless
    # fine-tuning is on the target alone (the paper preset), where every baseline's epoch is alike.
    finetune, scratch = runs_of("finetune"), runs_of("scratch")
    assert finetune and len({group_key(s) for s in finetune}) == 1
    assert scratch and len({group_key(s) for s in scratch}) == 1
    assert group_key(finetune[0]) != group_key(scratch[0])
    target_only = dataclasses.replace(finetune[0], config=finetune[0].config.replace(source_replay=False))
    assert group_key(target_only) == group_key(scratch[0])
    baselines = finetune + scratch
    students = [s for s in grid.trials.values() if s.kind == "transfer" and s.config.method == "self_training"]
    assert students and len({group_key(s) for s in students}) == 1
    assert group_key(students[0]) != group_key(baselines[0])
    proposed = [s for s in grid.trials.values() if s.kind == "transfer" and s.config.method == "proposed"]
    assert len(proposed) == 6 and len({group_key(s) for s in proposed}) == 1  # engine.fused.proposed
    assert group_key(proposed[0]) not in (group_key(students[0]), group_key(baselines[0]))
    # What cannot train fused trains alone: a translator that keeps state in its module, R1's
    # gradient inside the step, the semantic adversary.
    for change in ({"translator": "cyclegan"}, {"r1_gamma": 1.0}, {"w_semantic": 0.1}):
        assert group_key(dataclasses.replace(proposed[0], config=proposed[0].config.replace(**change))) is None, change
    alone = keys.get(None, [])
    assert {s.config.method for s in alone if s.kind == "transfer"} == {"source_only"}
    assert all(group_key(s) is None for s in grid.trials.values() if s.kind not in ("segmentation", "transfer"))
    segmentation = {group_key(s) for s in grid.trials.values() if s.kind == "segmentation"}
    assert not segmentation & {group_key(s) for s in baselines}


@pytest.mark.parametrize("method", ["proposed", "source_only"])
def test_only_the_trainer_shaped_methods_build_as_a_trainer(method, make_cfg, data_for, segmenter_checkpoint, tmp_path):
    cfg = make_cfg(method=method, label_fraction=50.0)
    with pytest.raises(ValueError, match="only finetune, scratch, self_training"):
        transfer_trainer(cfg, data_for(cfg), tmp_path, segmenter_checkpoint)


def test_a_fused_baseline_resumes_from_its_own_checkpoint(make_cfg, data_for, trained_segmenter_checkpoint, tmp_path):
    """Two fused baselines and a self-training run stopped after 2 of 4 epochs (their last.pt) and
    trained on to 4 end exactly where the uninterrupted fused run ends: weights, Adam state, the
    selection's state (M_A's epoch-0 score included) and the self-training weight average all come
    back from each member's own file."""
    runs = [("finetune", 50.0), ("scratch", 100.0), ("self_training", 50.0)]

    def group(epochs: int, root):
        members = []
        for method, fraction in runs:
            cfg = make_cfg(method=method, label_fraction=fraction, epochs=epochs, transfer_epochs=epochs,
                           self_training_epochs=epochs, lr=3e-3)
            members.append(_member(cfg, data_for(cfg), root / method, trained_segmenter_checkpoint))
        return members

    straight = train_fused(group(4, tmp_path / "straight"))
    first = train_fused(group(2, tmp_path / "stopped"))
    assert [len(r.history) for r in first] == [2, 2, 2]
    resumed = train_fused(group(4, tmp_path / "stopped"))
    for (method, _), one, two in zip(runs, straight, resumed):
        assert not isinstance(two, BaseException), two
        summary = json.loads((tmp_path / "stopped" / method / RESULT_JSON).read_text())
        assert summary["epochs_trained"] == 2, method  # only the two epochs left
        assert [h["train_loss"] for h in two.history] == [h["train_loss"] for h in one.history], method
        assert two.test_jaccard_mean == one.test_jaccard_mean and two.best_epoch == one.best_epoch, method
