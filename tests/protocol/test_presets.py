"""Presets (the protocol) beside profiles (the scale): one home, orthogonal to --profile,
overridden by --set, listed by every command that builds a config."""
import pytest

from protocol.config import (
    PAPER_LABEL_BUDGET,
    PAPER_PROTOCOL,
    PAPER_TRANSFER,
    PRESETS,
    PROFILES,
    RunConfig,
    config_changes,
    make_config,
    transfer_variant,
)
from protocol.grid import SEGMENTATION, build_grid


def test_the_paper_preset_is_the_papers_protocol_in_full():
    cfg = make_config("paper", preset="paper")
    assert (cfg.augmentation, cfg.label_budget, cfg.selection) == ("none", "paper", "source")
    for name, value in {**PAPER_PROTOCOL, **PAPER_LABEL_BUDGET, **PAPER_TRANSFER}.items():
        assert getattr(cfg, name) == value, name
    assert transfer_variant(cfg.to_dict()) == "paper"  # what the report calls the proposed method's variant
    assert make_config("paper") == RunConfig()  # the project's protocol is RunConfig's defaults
    assert transfer_variant(make_config("paper").to_dict()) == "default"


def test_presets_and_profiles_set_different_fields():
    """Scale and protocol never touch the same field, so any profile goes with any preset."""
    for preset, fields in PRESETS.items():
        for profile, scale in PROFILES.items():
            assert not set(fields) & set(scale), (preset, profile)
            cfg = make_config(profile, preset=preset)
            assert all(getattr(cfg, k) == v for k, v in {**scale, **fields}.items()), (preset, profile)


def test_set_overrides_the_preset_and_the_changes_say_where_each_came_from():
    cfg = make_config("smoke", ["augmentation=affine", "lr=0.01"], preset="paper")
    assert cfg.augmentation == "affine" and cfg.label_budget == "paper"
    sources = {name: source for name, _, source in config_changes(cfg, "smoke", "paper")}
    assert sources["augmentation"] == "run" and sources["lr"] == "run"
    assert sources["label_budget"] == "preset paper" and sources["image_size"] == "profile smoke"
    assert sources["profile"] == "profile smoke"


def test_an_unknown_preset_is_refused():
    from protocol.config import ConfigError

    with pytest.raises(ConfigError, match="unknown preset 'papers'; choose from cxrsweep, paper"):
        make_config("paper", preset="papers")


def test_the_paper_grid_has_207_trials_and_shares_table_one_with_a_none_recipe_sweep():
    """Table I under the paper preset is the default protocol's Table I without augmentation:
    the transfer-side settings a preset sets are reset in Table I configs, so the two sweeps
    share those trials (and their folders in one OUT)."""
    paper = build_grid("all", make_config("paper", preset="paper"))
    ours = build_grid("all", make_config("paper"), augmentations=["none"])
    assert len(paper.runnable()) == 207
    table_one = {t for t, s in paper.trials.items() if s.kind == SEGMENTATION}
    assert table_one == {t for t, s in ours.trials.items() if s.kind == SEGMENTATION} and len(table_one) == 45


@pytest.mark.parametrize("command", ["run", "tune", "demo", "train", "train-transfer"])
def test_every_command_that_builds_a_config_lists_the_presets(command, capsys):
    from commands import main as cli

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preset {cxrsweep,paper}" in text and "label_budget=paper" in text and "augmentation=none" in text
    assert "--profile" in text
