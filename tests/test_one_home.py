"""Facts declared once: the engine never imports Ray, and what two places once declared apart is
now one declaration that both derive from."""
import importlib
import pkgutil
import subprocess
import sys

from protocol.config import RunConfig, make_config, warmup_identity
from protocol.results import OUTCOME_COLUMNS

RAY_FREE = ("errors", "data_io", "models", "protocol", "engine", "inference", "analysis", "commands")


def test_the_packages_below_sweep_never_import_ray():
    """At run time too (tests/test_layers.py reads the source): importing every module outside
    sweep/ and building the command line loads no Ray."""
    modules = [info.name for package in RAY_FREE
               for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
    assert "engine.transfer.dispatch" in modules and "inference.stages" in modules and "commands.main" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "sys.modules['commands.main'].build_parser()\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"Ray imported by a Ray-free module: {done.stdout}"


def test_the_grid_and_the_engine_key_warm_ups_by_one_identity():
    """What a warm-up computes from changes both its trial id and its cache key; what it never
    reads changes neither (the grid once hashed augment(ation) and profile and missed d_lr_ratio)."""
    from engine.transfer.proposed.warmup import translator_key
    from protocol.grid import warmup_trial

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
    from protocol.run_dir import TABLED_FIELDS

    assert set(TABLED_FIELDS) <= set(OUTCOME_COLUMNS)
    assert {"test_jaccard_mean", "n_test_images", "selected_model"} <= set(TABLED_FIELDS)


def test_translator_defaults_live_in_the_registry():
    from models.registry import translator_defaults
    from protocol.config import translator_arguments

    for name in ("munit", "cyclegan"):
        assert translator_arguments(RunConfig(translator=name)) == translator_defaults(name)


def test_the_report_draws_the_overlay_colours_the_engine_uses():
    import numpy as np
    from matplotlib.colors import to_rgb

    from analysis.overlays import PREDICTION_COLOUR, TRUTH_COLOUR, _hex
    from data_io.overlays import PREDICTION_RGB, TRUTH_RGB

    # The engine keeps one colour as float32 and one as uint8: either gives the hex of its integer values.
    assert _hex(np.array([255, 40, 40], dtype=np.float32)) == "#ff2828"
    assert _hex(np.array([40, 255, 40], dtype=np.uint8)) == "#28ff28"
    assert _hex((0, 0, 0)) == "#000000" and _hex((1, 16, 171)) == "#0110ab"
    # Read back as matplotlib reads the legend's colours, they are the engine's, whatever those are set to.
    for colour, rgb in ((PREDICTION_COLOUR, PREDICTION_RGB), (TRUTH_COLOUR, TRUTH_RGB)):
        assert [round(255 * channel) for channel in to_rgb(colour)] == [int(value) for value in rgb]


def test_m_a_of_train_transfer_is_the_sweeps_dependency(monkeypatch, tmp_path):
    """`cxrsweep train-transfer` without --segmenter trains the very M_A the sweep's grid depends on."""
    import engine.data.segmentation
    import engine.supervised
    from commands.transfer import train_source_model
    from protocol.grid import source_model_config, transfer_trials

    cell, m_a, _ = transfer_trials(make_config("smoke"), "proposed", "lungs", "montgomery", 3, 0.0)
    assert source_model_config(cell.config) == m_a.config
    trained = {}
    # train_source_model looks both up in their modules when it runs: nothing loads or trains here.
    monkeypatch.setattr(engine.data.segmentation, "segmentation_data", lambda cfg, source: ("data of", cfg, source))
    monkeypatch.setattr(engine.supervised, "train_supervised",
                        lambda cfg, data, run_dir: trained.update(cfg=cfg, data=data, run_dir=run_dir))
    train_source_model(cell.config, "jsrt", tmp_path)
    assert trained == {"cfg": m_a.config, "data": ("data of", m_a.config, "jsrt"), "run_dir": tmp_path}
    assert (m_a.config.fold, m_a.config.model, m_a.config.experiment) == (3, "unet", "segmentation")
