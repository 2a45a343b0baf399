"""Every RunConfig field is checked for type and range where a config is built (RunConfig(...),
from_dict, --set, a JSON file, a tuning record), and the error names the field, the value and what
is allowed."""
import dataclasses
import json

import numpy as np
import pytest

from errors import UserError
from protocol.config import ConfigError, RunConfig, make_config, parse_overrides
from protocol.tuned import load_config_file, read_record


def test_every_field_declares_its_rule():
    """A field added without a rule fails here: declare it with `checked(default, ...)`."""
    missing = [f.name for f in dataclasses.fields(RunConfig) if "rule" not in f.metadata]
    assert not missing, f"RunConfig fields without a rule (use protocol.config.checked): {missing}"


def test_every_field_has_a_type_the_rules_check():
    for f in dataclasses.fields(RunConfig):
        kinds = {part.strip() for part in str(f.type).split("|")}
        assert kinds & {"bool", "int", "float", "str"}, f"{f.name}: annotation {f.type!r} is not checked"


# (--set text, the line the user reads): one per class of mistake.
BAD_SETS = [
    ("epochs=abc", "epochs: 'abc' is not an integer"),  # wrong type
    ("lr=x", "lr: 'x' is not a number"),
    ("crop_borders=maybe", "crop_borders: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)"),
    ("lr=-1", "lr must be > 0, got -1.0"),  # out of range
    ("epochs=0", "epochs must be >= 1, got 0"),
    ("beta1=1", "beta1 must be >= 0 and < 1, got 1.0"),
    ("image_size=100", "image_size must be >= 32, a multiple of 32, got 100"),
    ("pseudo_label_keep=0", "pseudo_label_keep must be > 0 and <= 1, got 0.0"),
    ("label_fraction=120", "label_fraction must be >= 0 and <= 100, got 120.0"),
    ("lr=nan", "lr must be a finite number, got nan"),
    ("fold=5", "fold must be < n_folds (5), got 5"),
    ("lrr=1e-3", "unknown config field 'lrr' (did you mean 'lr'?)"),  # unknown field
    ("method=magic", "method must be one of supervised, proposed, self_training, finetune, scratch, source_only, "
                     "got 'magic'"),  # unknown names
    ("loss=focal", "loss must be one of ce, weighted_ce, ce_dice, got 'focal'"),
    ("selection=best", "selection must be one of schedule, target, source, got 'best'"),
    ("guard=maybe", "guard must be one of harm, strict, off, got 'maybe'"),
    ("pseudo_label_confidence=0.3", "pseudo_label_confidence must be >= 0.5 and < 1, got 0.3"),
    ("translator=pix2pix", "translator must be one of munit, cyclegan, got 'pix2pix'"),
    ("augmentation=heavy", "augmentation must be one of none, affine, robust, got 'heavy'"),
    ("label_budget=all", "label_budget must be one of honest, paper, got 'all'"),
    ("model=resnet", "model must be one of fcn, unet, segnet, got 'resnet'"),
    ("task=ribs", "task must be one of lungs, heart, clavicles, got 'ribs'"),
    ("device=tpu", "device must be one of auto, cpu, cuda, got 'tpu'"),
    ("target=Hospital/A", "target: target name 'Hospital/A'"),
    ("profile=huge", "profile must be one of paper, cpu, demo, smoke, got 'huge'"),
]


@pytest.mark.parametrize("pair, message", BAD_SETS)
def test_a_bad_set_value_names_the_field_the_value_and_what_is_allowed(pair, message):
    with pytest.raises(ConfigError) as raised:
        make_config("smoke", [pair])
    assert message in str(raised.value)
    assert isinstance(raised.value, UserError)


def test_set_text_becomes_the_fields_type():
    cfg = make_config("smoke", ["lr=1e-3", "epochs=3", "crop_borders=off", "label_fraction=none", "w_adv=2",
                                "checkpoint_every_s=inf"])
    assert (cfg.lr, cfg.epochs, cfg.crop_borders, cfg.label_fraction) == (0.001, 3, False, None)
    assert cfg.w_adv == 2.0 and isinstance(cfg.w_adv, float)  # "2" for a float field is 2.0, not 2
    assert cfg.checkpoint_every_s == float("inf")  # only after the last epoch: allowed
    with pytest.raises(ConfigError, match="--set expects key=value, got 'epochs'"):
        parse_overrides(["epochs"])


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="epochs: 2.5 is not an integer"):
        RunConfig(epochs=2.5)
    with pytest.raises(ConfigError, match="lr: '1e-3' is not a number"):
        RunConfig(lr="1e-3")  # text is parsed only where text comes from (--set, JSON files)
    with pytest.raises(ConfigError, match="compile: 1 is not a boolean"):
        RunConfig(compile=1)
    with pytest.raises(ConfigError, match="unknown config field 'epoch' \\(did you mean 'epochs'\\?\\)"):
        RunConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="warmup_epochs must be >= 1, got 0"):
        RunConfig().replace(warmup_epochs=0)
    # numpy scalars (a search library's samples) become Python's, as a JSON round trip needs
    cfg = RunConfig(lr=np.float32(0.5), batch_size=np.int64(8), compile=np.bool_(False))
    assert (type(cfg.lr), type(cfg.batch_size), type(cfg.compile)) == (float, int, bool)
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_a_config_file_with_a_bad_value_names_the_file(tmp_path):
    path = tmp_path / "fields.json"
    path.write_text(json.dumps({"lr": "0.5", "epochs": 4}))
    assert load_config_file(path) == {"lr": 0.5, "epochs": 4}  # text in JSON is parsed like --set's
    path.write_text(json.dumps({"lr": 0.5, "epochs": "four"}))
    with pytest.raises(ConfigError, match=f"^{path}: epochs: 'four' is not an integer$"):
        load_config_file(path)
    path.write_text(json.dumps({"lr": 0.5, "weight_decay": -1}))
    with pytest.raises(ConfigError, match=f"^{path}: weight_decay must be >= 0, got -1.0$"):
        load_config_file(path)


def test_a_tuning_record_with_a_bad_value_names_the_record_and_the_entry(tmp_path):
    entry = {"scope": {"experiment": "segmentation", "model": "unet", "task": "lungs", "fold": 2},
             "values": {"lr": -0.001, "batch_size": 4}, "trained": {}, "scored": {}, "data": {}, "image_size": 64}
    path = tmp_path / "best-config.json"
    path.write_text(json.dumps({"kind": "cxrsweep-tuning", "version": 2, "entries": [entry]}))
    with pytest.raises(ConfigError) as raised:
        read_record(path)
    assert str(raised.value) == f"{path}, the entry of model unet task lungs fold 2: lr must be > 0, got -0.001"


@pytest.mark.parametrize("pair", ["epochs=abc", "lr=-1", "lrr=1e-3", "method=magic"])
def test_a_sweep_with_a_bad_set_value_refuses_before_anything_starts(pair, tmp_path, monkeypatch, capsys):
    """The sweep never reaches its runner (nor Ray, nor the data): one line, exit 2."""
    import sweep.runner
    from commands import main as cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(sweep.runner, "run_grid", must_not_run)
    code = cli.main(["run", "all", "--profile", "smoke", "--set", pair, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cxrsweep: error: ") and len(err.strip().splitlines()) == 1, err
    assert pair.split("=")[0] in err
    assert not (tmp_path / "out").exists()
