"""The experiment grid: Table I / II sizes, dependencies, not-applicable cells, stage order."""
import pytest

from protocol.config import LABEL_FRACTIONS, SEGMENTATION_MODELS, TASKS, TRANSFER_METHODS, make_config
from protocol.grid import (
    QUALITATIVE,
    SEGMENTATION,
    TRANSLATOR_WARMUP,
    build_grid,
    config_hash,
    spec_from_dict,
    spec_to_dict,
)


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
    # One warm-up per repetition, shared by every fraction; one M_A per fold (lungs), plus the
    # heart and clavicle M_A of the first repetition's fold for the Fig. 9 runs.
    assert len([t for t in grid.trials.values() if t.kind == TRANSLATOR_WARMUP]) == 2
    assert len([t for t in grid.trials.values() if t.kind == SEGMENTATION]) == 2 + 2


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
    c = build_grid("segmentation", base.replace(device="cpu", num_threads=3), models=["unet"], tasks=["lungs"],
                   folds=[0])
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


def test_fig9_qualitative_runs_reuse_table_one_m_a_and_the_lungs_warmup():
    """Heart and clavicles on the target: one proposed run at 0 % per task and target, first
    selected repetition only, no table row, depending on the Table I U-Net and the lungs warm-up."""
    grid = build_grid("all", make_config("smoke"), folds=[0, 1, 2, 3, 4], repetitions=[6, 2])
    qualitative = [t for t in grid.trials.values() if t.kind == QUALITATIVE]
    assert sorted(t.config.task for t in qualitative) == ["clavicles", "heart"]
    table_one = {t.trial_id for t in grid.trials.values() if t.kind == SEGMENTATION}
    assert len(table_one) == len(SEGMENTATION_MODELS) * len(TASKS) * 5  # nothing added for them
    lungs_proposed = next(t for t in grid.trials.values() if t.has_row and t.config.method == "proposed"
                          and t.config.task == "lungs" and t.config.repetition == 6)
    lungs_warmup = next(d for d in lungs_proposed.depends_on if grid.trials[d].kind == TRANSLATOR_WARMUP)
    for spec in qualitative:
        cfg = spec.config
        assert not spec.has_row and spec.not_applicable is None
        assert (cfg.experiment, cfg.method, cfg.label_fraction, cfg.target, cfg.repetition, cfg.fold) == (
            "transfer", "proposed", 0.0, "montgomery", 6, 1)
        deps = {grid.trials[d].kind: grid.trials[d] for d in spec.depends_on}
        assert sorted(deps) == [SEGMENTATION, TRANSLATOR_WARMUP]
        m_a = deps[SEGMENTATION]
        assert m_a.trial_id in table_one
        assert (m_a.config.model, m_a.config.task, m_a.config.fold) == ("unet", cfg.task, 1)
        assert deps[TRANSLATOR_WARMUP].trial_id == lungs_warmup
        assert spec_from_dict(spec_to_dict(spec)) == spec
    # Table II stays lungs only.
    assert {t.config.task for t in grid.trials.values() if t.has_row and t.config.experiment == "transfer"} == {"lungs"}


@pytest.mark.parametrize("kwargs, tasks", [
    ({"tasks": ["lungs"]}, []),  # --tasks lungs: no Fig. 9 runs
    ({"tasks": ["heart"]}, ["heart"]),  # no Table II cell, only heart's Fig. 9 run
    ({"methods": ["finetune", "source_only"]}, []),  # they come with the proposed method ...
    ({"fractions": [5, 100]}, []),  # ... at 0 % labels
    ({"targets": ["montgomery", "shenzhen"]}, ["clavicles", "clavicles", "heart", "heart"]),
])
def test_fig9_runs_follow_the_selection(kwargs, tasks):
    grid = build_grid("transfer", make_config("smoke"), **{"repetitions": [0], **kwargs})
    assert sorted(t.config.task for t in grid.trials.values() if t.kind == QUALITATIVE) == tasks
    if kwargs.get("tasks") == ["heart"]:
        assert not [t for t in grid.trials.values() if t.kind != QUALITATIVE and t.has_row
                    and t.config.experiment == "transfer"]
    with pytest.raises(ValueError, match="--tasks"):
        build_grid("transfer", make_config("smoke"), tasks=["ribs"])


def test_trials_share_one_image_size_and_crop_setting():
    from sweep.inputs import data_settings

    base = make_config("smoke")
    grid = build_grid("segmentation", base, models=["unet"], tasks=["lungs"], folds=[0, 1])
    assert data_settings(grid.runnable()) == (base.image_size, base.crop_borders)
    assert data_settings([]) == (0, True)
    other_size = build_grid("segmentation", make_config("smoke", image_size=base.image_size * 2), models=["unet"],
                            tasks=["lungs"], folds=[0])
    with pytest.raises(ValueError, match="mix image sizes"):
        data_settings(grid.runnable() + other_size.runnable())
    uncropped = build_grid("segmentation", make_config("smoke", crop_borders=not base.crop_borders), models=["unet"],
                           tasks=["lungs"], folds=[0])
    with pytest.raises(ValueError, match="mix crop_borders"):
        data_settings(grid.runnable() + uncropped.runnable())


def test_a_recipe_axis_runs_every_cell_per_recipe_and_shares_the_warmups():
    base = make_config("smoke")
    one = build_grid("all", base, folds=[0], repetitions=[0], fractions=[0, 10])
    both = build_grid("all", base, folds=[0], repetitions=[0], fractions=[0, 10], augmentations=["none", "robust"])
    warmups = [s for s in both.trials.values() if s.kind == TRANSLATOR_WARMUP]
    assert len(warmups) == 1
    cells = [s for s in both.trials.values() if s.kind != TRANSLATOR_WARMUP]
    assert len(cells) == 2 * (len(one.trials) - 1)
    assert {s.config.augmentation for s in cells} == {"none", "robust"}
    for spec in cells:
        assert all(d in both.trials for d in spec.depends_on)
        # a cell depends on the M_A of its own recipe
        assert all(both.trials[d].config.augmentation in (spec.config.augmentation, "none")
                   for d in spec.depends_on)
        assert all(both.trials[d].config.augmentation == spec.config.augmentation
                   for d in spec.depends_on if both.trials[d].kind == SEGMENTATION)
    with pytest.raises(ValueError, match="--augmentations"):
        build_grid("all", base, augmentations=["flip"])
