"""Facts declared once: the engine never imports Ray, and what two places once declared apart is
now one declaration that both derive from."""
import pkgutil
import subprocess
import sys

import sweep.engine
from sweep.config import RunConfig, make_config, warmup_identity
from sweep.results import OUTCOME_COLUMNS


def test_the_engine_packages_never_import_ray():
    engine = [f"sweep.engine.{m.name}" for m in pkgutil.iter_modules(sweep.engine.__path__)]
    assert "sweep.engine.transfer" in engine and "sweep.engine.segment" in engine
    modules = ["models.registry", "models.translators", "models.segmenters", "data_io.cache", "data_io.preprocess",
               "data_io.phantoms", "sweep.config", "sweep.grid", "sweep.results", "sweep.tuned", "sweep.store",
               "sweep.cli_common", "sweep.cli", *engine]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "sys.modules['sweep.cli'].build_parser()\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"Ray imported by a Ray-free module: {done.stdout}"


def test_the_grid_and_the_engine_key_warm_ups_by_one_identity():
    """What a warm-up computes from changes both its trial id and its cache key; what it never
    reads changes neither (the grid once hashed augment(ation) and profile and missed d_lr_ratio)."""
    from sweep.engine.translation import translator_key
    from sweep.grid import warmup_trial

    base = make_config("smoke", experiment="transfer", method="proposed")

    def keys(cfg: RunConfig) -> tuple[str, str]:
        return warmup_trial(cfg, "montgomery", 0).trial_id.rsplit("-", 1)[1], translator_key(cfg, "src", "tgt")

    for changed in ({"d_lr_ratio": 2.0}, {"warmup_epochs": 3}, {"translator_width": 16}, {"crop_borders": False},
                    {"batch_size": 2}, {"gan_lr": 1e-3}):
        grid_key, engine_key = keys(base.replace(**changed))
        assert grid_key != keys(base)[0] and engine_key != keys(base)[1], changed
    for unread in ({"augmentation": "none"}, {"w_seg": 2.0}, {"w_semantic": 1.0}, {"selection": "source"},
                   {"task": "heart"}, {"label_fraction": 50.0}, {"epochs": 7}):
        assert keys(base.replace(**unread)) == keys(base), unread
    # profile names a scale; the fields it sets are in the identity themselves.
    assert warmup_identity(base.replace(profile="paper")) == warmup_identity(base)


def test_a_trials_row_copies_what_result_json_holds():
    from sweep.engine.run_dir import TABLED_FIELDS

    assert set(TABLED_FIELDS) <= set(OUTCOME_COLUMNS)
    assert {"test_jaccard_mean", "n_test_images", "selected_model"} <= set(TABLED_FIELDS)


def test_translator_defaults_live_in_the_registry():
    from models.registry import translator_defaults
    from sweep.config import translator_arguments

    for name in ("munit", "cyclegan"):
        assert translator_arguments(RunConfig(translator=name)) == translator_defaults(name)


def test_the_report_draws_the_overlay_colours_the_engine_uses():
    from analysis.overlays import PREDICTION_COLOUR, TRUTH_COLOUR
    from sweep.engine.overlays import PREDICTION_RGB, TRUTH_RGB

    assert PREDICTION_COLOUR == "#%02x%02x%02x" % tuple(int(v) for v in PREDICTION_RGB)
    assert TRUTH_COLOUR == "#%02x%02x%02x" % tuple(int(v) for v in TRUTH_RGB)


def test_m_a_of_train_transfer_is_the_sweeps_dependency(monkeypatch, tmp_path):
    """`cxrsweep train-transfer` without --segmenter trains the very M_A the sweep's grid depends on."""
    import sweep.engine.data
    import sweep.engine.supervised
    from sweep.cli_transfer import train_source_model
    from sweep.grid import source_model_config, transfer_trials

    cell, m_a, _ = transfer_trials(make_config("smoke"), "proposed", "lungs", "montgomery", 3, 0.0)
    assert source_model_config(cell.config) == m_a.config
    trained = {}
    # train_source_model looks both up in their modules when it runs: nothing loads or trains here.
    monkeypatch.setattr(sweep.engine.data, "segmentation_data", lambda cfg, source: ("data of", cfg, source))
    monkeypatch.setattr(sweep.engine.supervised, "train_supervised",
                        lambda cfg, data, run_dir: trained.update(cfg=cfg, data=data, run_dir=run_dir))
    train_source_model(cell.config, "jsrt", tmp_path)
    assert trained == {"cfg": m_a.config, "data": ("data of", m_a.config, "jsrt"), "run_dir": tmp_path}
    assert (m_a.config.fold, m_a.config.model, m_a.config.experiment) == (3, "unet", "segmentation")
