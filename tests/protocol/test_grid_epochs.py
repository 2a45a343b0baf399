"""What a trial of the grid trains for (TrialSpec.training_epochs, which benchmarks/bench_gpu.py
projects the paper grid's wall time from), kind by kind and method by method."""
from protocol.config import TRANSFER_METHODS, make_config
from protocol.grid import EPOCHS_FIELD, QUALITATIVE, SEGMENTATION, TRANSLATOR_WARMUP, build_grid


def test_every_trial_trains_the_epochs_its_engine_runs():
    base = make_config("smoke", ["epochs=7", "transfer_epochs=3", "self_training_epochs=4", "warmup_epochs=2"])
    assert set(EPOCHS_FIELD) == set(TRANSFER_METHODS)
    expected = {"proposed": 3, "self_training": 4, "finetune": 7, "scratch": 7, "source_only": 0}
    seen = set()
    for spec in build_grid("all", base, folds=[0], repetitions=[0]).runnable():
        if spec.kind == SEGMENTATION:
            want = 7
        elif spec.kind == TRANSLATOR_WARMUP:
            want = 2
        elif spec.kind == QUALITATIVE:
            want = 3
        else:
            want = expected[spec.config.method]
            seen.add(spec.config.method)
        assert spec.training_epochs == want, spec.trial_id
    assert seen == set(TRANSFER_METHODS)


def test_asha_lets_every_tuned_trial_live_through_its_last_epoch():
    """ASHA's max_t is one past the epochs the cell's engine trains: a self-training cell trains
    self_training_epochs, not epochs (a horizon of epochs + 1 = 3 would stop it before its 5th epoch)."""
    from sweep.tuning import asha_max_t

    base = make_config("smoke", ["epochs=2", "transfer_epochs=5", "self_training_epochs=5"])
    grid = build_grid("all", base, models=["unet"], tasks=["lungs"], folds=[0], repetitions=[0],
                      methods=["proposed", "self_training", "finetune"], fractions=[50])
    horizons = {(spec.kind, spec.config.method): asha_max_t(spec) for spec in grid.runnable()
                if spec.kind != TRANSLATOR_WARMUP}
    assert horizons[SEGMENTATION, "supervised"] == 3
    transfer = {method: h for (kind, method), h in horizons.items() if kind not in (SEGMENTATION, QUALITATIVE)}
    assert transfer == {"proposed": 6, "self_training": 6, "finetune": 3}
