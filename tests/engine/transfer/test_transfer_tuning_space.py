"""Every field a tuning search samples acts in the training it tunes: two samples that differ in
that field alone give different losses (sweep.tuning.search_space)."""
import pytest

from engine.data.segmentation import segmentation_data
from engine.supervised import train_supervised
from engine.transfer.dispatch import train_transfer
from sweep.tuning import search_space


def _two_values(domain) -> tuple:
    """Two different values a search could draw from a Ray Tune domain."""
    if hasattr(domain, "categories"):
        return tuple(domain.categories[:2])
    return domain.lower, domain.upper


def _losses(history: list[dict]) -> dict:
    return {k: v for k, v in history[0].items() if k == "train_loss" or k.startswith(("D_", "G_", "S_"))
            and not k.endswith("_s")}


@pytest.mark.parametrize("method,fraction", [("supervised", None), ("proposed", 0.0), ("proposed", 50.0),
                                             ("finetune", 50.0), ("scratch", 50.0)])
def test_each_sampled_field_changes_the_losses(method, fraction, make_cfg, source, data_for, segmenter_checkpoint,
                                               warmed_translator, tmp_path):
    if method == "supervised":
        cfg = make_cfg(experiment="segmentation", method="supervised", label_fraction=None, epochs=1)

        def train(run_cfg, run_dir):
            return train_supervised(run_cfg, segmentation_data(run_cfg, source), run_dir)
    else:
        cfg = make_cfg(method=method, label_fraction=fraction, epochs=1, transfer_epochs=1)

        def train(run_cfg, run_dir):
            return train_transfer(run_cfg, data_for(run_cfg), run_dir, segmenter_checkpoint, warmed_translator)
    space = search_space(cfg)
    assert set(space) >= {"lr", "weight_decay", "batch_size"}
    assert ("w_seg" in space) == (method == "proposed")
    # The translator's loss weights shape the shared warm-up: never sampled (see PROPOSED_SPACE).
    assert not {"w_adv", "w_cycle", "w_recon", "w_style", "w_content", "w_identity"} & set(space)
    for name, domain in space.items():
        low, high = _two_values(domain)
        first = _losses(train(cfg.replace(**{name: low}), tmp_path / f"{name}-low").history)
        second = _losses(train(cfg.replace(**{name: high}), tmp_path / f"{name}-high").history)
        assert first and first != second, f"{method}: {name}={low} and {name}={high} gave the same losses {first}"


def test_source_only_has_nothing_to_tune(make_cfg):
    with pytest.raises(ValueError, match="source_only trains nothing"):
        search_space(make_cfg(method="source_only"))
