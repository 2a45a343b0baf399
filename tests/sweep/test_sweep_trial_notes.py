"""The console's line for a finished trial names what a user must know about it: a proposed run
that kept no adaptation, discriminators that saturated (sweep.progress.TRIAL_NOTES), read from
the run's result.json (sweep.trainables.trial_notes)."""
from __future__ import annotations

import json

import pytest

from protocol.run_dir import RESULT_JSON
from sweep.progress import TRIAL_NOTES, SweepProgress
from sweep.trainables import trial_notes


class _Trial:
    """The parts of a Ray Tune trial SweepProgress reads."""

    def __init__(self, name: str, last_result: dict):
        self.name, self.last_result, self.status, self.num_failures = name, last_result, "TERMINATED", 0

    def __str__(self) -> str:
        return self.name


def _done_line(last_result: dict) -> str:
    lines: list[str] = []
    progress = SweepProgress(total=1, say=lines.append)
    trial = _Trial("transfer-proposed-x", last_result)
    progress.begin({str(trial)})
    progress.on_trial_complete(0, [trial], trial)
    assert len(lines) == 1
    return lines[0]


def test_a_trial_that_fell_back_and_saturated_says_both():
    line = _done_line({"test_jaccard_mean": 0.8125, "node_ip": "10.0.0.7", "fell_back": 1, "saturated": 1})
    assert line == ("[sweep] done transfer-proposed-x: test Jaccard 0.8125 (node 10.0.0.7)"
                    f"; {TRIAL_NOTES['fell_back']}; {TRIAL_NOTES['saturated']}")


def test_a_trial_with_neither_note_says_only_its_score():
    line = _done_line({"test_jaccard_mean": 0.8125, "node_ip": "10.0.0.7", "fell_back": 0, "saturated": 0})
    assert line == "[sweep] done transfer-proposed-x: test Jaccard 0.8125 (node 10.0.0.7)"


@pytest.mark.parametrize("summary, notes", [
    ({"selected_model": "no_adaptation", "discriminators_saturated": True}, {"fell_back": 1, "saturated": 1}),
    ({"selected_model": "adapted", "discriminators_saturated": False}, {"fell_back": 0, "saturated": 0}),
])
def test_trial_notes_read_result_json(tmp_path, summary, notes):
    (tmp_path / RESULT_JSON).write_text(json.dumps({"test_jaccard_mean": 0.8, **summary}))
    assert trial_notes(tmp_path) == notes
    assert set(notes) == set(TRIAL_NOTES)  # every flag the console knows, and no other
