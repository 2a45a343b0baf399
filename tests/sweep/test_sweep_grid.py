"""The experiment grid: Table I / II sizes, dependencies, not-applicable cells, stage order."""
import pytest

from sweep.config import LABEL_FRACTIONS, SEGMENTATION_MODELS, TASKS, TRANSFER_METHODS, make_config
from sweep.grid import SEGMENTATION, TRANSLATOR_WARMUP, build_grid, config_hash, spec_from_dict, spec_to_dict


def test_table_one_is_models_by_tasks_by_folds():
    grid = build_grid("segmentation", make_config("smoke"))
    assert len(grid.trials) == len(SEGMENTATION_MODELS) * len(TASKS) * 5
    assert {t.kind for t in grid.trials.values()} == {SEGMENTATION}
    assert len(grid.stages()) == 1


def test_table_two_cells_dependencies_and_not_applicable():
    base = make_config("smoke")
    grid = build_grid("transfer", base, repetitions=[0, 6])
    cells = [t for t in grid.trials.values() if t.has_row and t.config.experiment == "transfer"]
    assert len(cells) == len(TRANSFER_METHODS) * len(LABEL_FRACTIONS) * 2
    na = {(t.config.method, t.config.label_fraction) for t in grid.not_applicable()}
    assert ("finetune", 0.0) in na and ("scratch", 0.0) in na and ("proposed", 0.0) not in na
    assert ("source_only", 0.0) not in na and ("source_only", 5.0) in na
    proposed = next(t for t in cells if t.config.method == "proposed" and t.config.repetition == 6
                    and t.config.label_fraction == 5.0)
    deps = [grid.trials[d] for d in proposed.depends_on]
    assert sorted(d.kind for d in deps) == [SEGMENTATION, TRANSLATOR_WARMUP]
    segmenter = next(d for d in deps if d.kind == SEGMENTATION)
    # M_A is the U-Net of the matching JSRT fold: repetition 6 -> fold 1.
    assert (segmenter.config.model, segmenter.config.task, segmenter.config.fold) == ("unet", "lungs", 1)
    scratch = next(t for t in cells if t.config.method == "scratch" and t.config.label_fraction == 5.0)
    assert [grid.trials[d].kind for d in scratch.depends_on] == [SEGMENTATION]  # M_A's architecture
    # One warm-up per repetition, shared by every fraction; one M_A per fold.
    assert len([t for t in grid.trials.values() if t.kind == TRANSLATOR_WARMUP]) == 2
    assert len([t for t in grid.trials.values() if t.kind == SEGMENTATION]) == 2


def test_m_a_is_the_table_one_trial_and_stages_put_dependencies_first():
    grid = build_grid("all", make_config("smoke", ["w_adv=2"]), folds=[0], repetitions=[0])
    table_one = {t.trial_id for t in grid.trials.values() if t.kind == SEGMENTATION}
    assert len(table_one) == len(SEGMENTATION_MODELS) * len(TASKS)  # M_A added no extra trial
    placed = {}
    for layer, stage in enumerate(grid.stages()):
        for spec in stage:
            assert all(placed[d] < layer for d in spec.depends_on)
            placed[spec.trial_id] = layer
    assert set(placed) == {t.trial_id for t in grid.runnable()}


def test_ids_follow_the_config_and_specs_round_trip():
    base = make_config("smoke")
    a = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0])
    b = build_grid("segmentation", base.replace(lr=1e-3), models=["unet"], tasks=["lungs"], folds=[0])
    c = build_grid("segmentation", base.replace(device="cpu", num_threads=3), models=["unet"], tasks=["lungs"], folds=[0])
    assert list(a.trials) != list(b.trials)
    assert list(a.trials) == list(c.trials)  # where a run executes does not change what it computes
    spec = next(iter(a.trials.values()))
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert config_hash(spec.config) == spec.trial_id.rsplit("-", 1)[1]


@pytest.mark.parametrize("kwargs, flag", [
    ({"models": ["unet", "resnet"]}, "--models"),
    ({"folds": [5]}, "--folds"),
    ({"fractions": [150]}, "--fractions"),
    ({"methods": ["magic"]}, "--methods"),
])
def test_bad_selections_name_their_flag(kwargs, flag):
    experiment = "segmentation" if "models" in kwargs or "folds" in kwargs else "transfer"
    with pytest.raises(ValueError, match=flag):
        build_grid(experiment, make_config("smoke"), **kwargs)


def test_transfer_tasks_are_the_labelled_ones():
    with pytest.raises(ValueError, match="lungs only"):
        build_grid("transfer", make_config("smoke"), tasks=["heart"])
