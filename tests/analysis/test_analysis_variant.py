"""Table II says which variant of the proposed method ran, read from the trials' cfg_* columns."""
import pandas as pd

from analysis.tables import proposed_variant_notes
from protocol.config import PAPER_TRANSFER, make_config
from protocol.results import config_values, key_values


def proposed_row(trial_id: str, overrides: dict, **outcome) -> dict:
    cfg = make_config("smoke", overrides, experiment="transfer", method="proposed", label_fraction=0.0)
    return {**key_values(cfg, trial_id), **config_values(cfg), "status": "ok", **outcome}


def test_table2_notes_name_the_variant_the_fallbacks_and_saturation():
    target = dict(selection_criterion="target_plausibility", discriminators_saturated=False)
    trials = pd.DataFrame([
        proposed_row("d0", {}, selected_model="no_adaptation", **target),
        proposed_row("d1", {}, selected_model="adapted", **target),
        proposed_row("p0", PAPER_TRANSFER, selected_model="adapted", selection_criterion="source_val_jaccard",
                     discriminators_saturated=True),
        proposed_row("c0", {"w_adv": 3.0}, selected_model="adapted", **target),
        {**proposed_row("f0", {}), "status": "failed"},
    ])
    notes = proposed_variant_notes(trials)
    assert len(notes) == 3
    custom, default, paper = notes  # sorted by variant name
    assert ("default variant" in default and "2 finished trial(s)" in default
            and "1 of them kept no adaptation" in default)
    assert "custom variant (custom: w_adv=3.0)" in custom
    assert ("paper-faithful" in paper and "kept no adaptation" not in paper
            and "in 1 the discriminators saturated" in paper)


def test_the_report_carries_the_variant_note(built_report):
    assert "The proposed method ran the default variant" in (built_report.parent / "table2.md").read_text()
