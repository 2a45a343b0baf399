"""What a trial of the grid trains for (TrialSpec.training_epochs, which benchmarks/bench_gpu.py
projects the paper grid's wall time from), kind by kind and method by method."""
from protocol.config import TRANSFER_METHODS, make_config
from protocol.grid import EPOCHS_FIELD, QUALITATIVE, SEGMENTATION, TRANSLATOR_WARMUP, build_grid


def test_every_trial_trains_the_epochs_its_engine_runs():
    base = make_config("smoke", ["epochs=7", "transfer_epochs=3", "warmup_epochs=2"])
    assert set(EPOCHS_FIELD) == set(TRANSFER_METHODS)
    expected = {"proposed": 3, "self_training": 3, "finetune": 7, "scratch": 7, "source_only": 0}
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
