"""Tuning records without Ray: which trials an entry configures, what it leaves alone, and the
test-image check `cxrsweep run --config` makes before Ray starts."""
from __future__ import annotations

import json

import pytest

from protocol.config import make_config
from protocol.grid import SEGMENTATION, TRANSLATOR_WARMUP, build_grid
from protocol.tuned import (
    TunedEntry,
    TuningRecord,
    check_grid,
    load_config_file,
    provenance,
    read_record,
    scope_of,
    split_ids,
)
from sweep.inputs import load_datasets


@pytest.fixture
def datasets(data_paths):
    return load_datasets({"jsrt", "montgomery"}, data_paths, 64)


def _entry(spec, datasets, **values) -> TunedEntry:
    return TunedEntry(scope=scope_of(spec), values=values, cell=spec.trial_id, **provenance(spec, datasets))


def _cells(grid, kind):
    return {t.config.repetition if kind != SEGMENTATION else t.config.fold: t
            for t in grid.trials.values() if t.kind == kind and t.has_row}


def test_a_transfer_entry_changes_its_cell_only_and_refuses_other_repetitions(datasets, tmp_path):
    base = make_config("smoke")
    plain = build_grid("transfer", base, methods=["proposed", "finetune"], fractions=[50], repetitions=[0, 1])
    cell = next(t for t in plain.runnable() if t.config.method == "proposed" and t.config.repetition == 0)
    record = TuningRecord("best.json", [_entry(cell, datasets, w_seg=3.0, lr=2e-4)])
    tuned = build_grid("transfer", base, methods=["proposed", "finetune"], fractions=[50], repetitions=[0, 1],
                       tuned=record.adjust)
    changed = {t.trial_id for t in tuned.trials.values()} - set(plain.trials)
    assert {tuned.trials[t].config.method for t in changed} == {"proposed"}  # finetune cells keep theirs
    for trial_id in changed:
        spec = tuned.trials[trial_id]
        assert (spec.config.w_seg, spec.config.lr) == (3.0, 2e-4)
        # M_A and the warm-up are those the tuning scored with: untouched.
        assert set(spec.depends_on) <= set(plain.trials)
    assert any(t.kind == TRANSLATOR_WARMUP for t in tuned.trials.values())

    with pytest.raises(ValueError) as refused:
        check_grid(record, tuned, datasets, say=lambda line: None)
    message = str(refused.value)
    rep1 = next(t for t in tuned.runnable() if t.config.method == "proposed" and t.config.repetition == 1)
    ids = {name: list(d.ids) for name, d in datasets.items()}
    overlap = sorted(set(split_ids(rep1, ids)["test"]["montgomery"]) & record.entries[0].used()["montgomery"])
    assert rep1.trial_id in message and overlap and all(i in message for i in overlap[:8])
    assert "the config of repetition 0" in message
    # Repetition 0 alone passes: its test split is disjoint from what the tuning used.
    only_rep0 = build_grid("transfer", base, methods=["proposed"], fractions=[50], repetitions=[0],
                           tuned=record.adjust)
    check_grid(record, only_rep0, datasets, say=lambda line: None)


def test_entries_of_several_folds_each_configure_their_own_fold(datasets, tmp_path):
    base = make_config("smoke")
    plain = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0, 1, 2])
    cells = _cells(plain, SEGMENTATION)
    record = TuningRecord("best.json", [_entry(cells[0], datasets, lr=1e-3), _entry(cells[1], datasets, lr=2e-3)])
    grid = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0, 1], tuned=record.adjust)
    assert sorted(t.config.lr for t in grid.trials.values()) == [1e-3, 2e-3]
    assert {t.config.fold: t.config.lr for t in grid.trials.values()} == {0: 1e-3, 1: 2e-3}
    check_grid(record, grid, datasets, say=lambda line: None)
    with pytest.raises(ValueError, match="folds 0, 1, and fold 2 has no tuned config"):
        build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[2], tuned=record.adjust)
    # Other models and tasks are not the tuned cell: untouched.
    other = build_grid("segmentation", base, models=["fcn"], tasks=["heart"], folds=[0], tuned=record.adjust)
    assert set(other.trials) <= set(build_grid("segmentation", base, models=["fcn"], tasks=["heart"]).trials)
    # The provenance names the second-validation fold as scored and the three others as trained.
    ids = {name: list(d.ids) for name, d in datasets.items()}
    parts = split_ids(cells[0], ids)
    assert record.entries[0].scored == {"jsrt": parts["val"]["jsrt"]}
    assert record.entries[0].trained == {"jsrt": parts["train"]["jsrt"]}


def test_records_round_trip_and_only_run_applies_them(datasets, tmp_path):
    spec = next(iter(build_grid("segmentation", make_config("smoke"), models=["unet"], tasks=["lungs"],
                                folds=[0]).trials.values()))
    path = tmp_path / "best-config.json"
    TuningRecord(str(path), [_entry(spec, datasets, lr=1e-3)]).write(path)
    assert read_record(path).entries == [_entry(spec, datasets, lr=1e-3)]
    with pytest.raises(ValueError, match="apply it with `cxrsweep run --config FILE`"):
        load_config_file(path)  # train / train-transfer --config
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"config": {"lr": 1e-3}, "cell": spec.trial_id, "score": {}}))
    with pytest.raises(ValueError, match="older `cxrsweep tune` that did not record"):
        read_record(old)


def test_tune_refuses_a_tuning_record_as_config_before_ray(datasets, tmp_path, monkeypatch, capsys):
    """`cxrsweep tune --config RECORD` stops with the refusal train and train-transfer give (exit 2),
    before any tuning starts: a record's entries belong to particular folds or repetitions."""
    import sweep.tuning
    from commands import main as cli

    spec = next(iter(build_grid("segmentation", make_config("smoke"), models=["unet"], tasks=["lungs"],
                                folds=[0]).trials.values()))
    path = tmp_path / "best-config.json"
    TuningRecord(str(path), [_entry(spec, datasets, lr=1e-3)]).write(path)

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuning started with a tuning record as --config")

    monkeypatch.setattr(sweep.tuning, "run_tuning", no_tuning)
    code = cli.main(["tune", "--config", str(path), "--profile", "smoke", "--jsrt", "J", "--scr", "S",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: a tuning record written by `cxrsweep tune`" in err
    assert "apply it with `cxrsweep run --config FILE`" in err
    assert not (tmp_path / "out").exists()
