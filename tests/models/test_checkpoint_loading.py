"""Checkpoint files are read with torch's weights-only loader: a file from elsewhere never runs code."""
import pytest
import torch

from models.registry import load_segmenter, load_torch_file


class _RunsCodeOnLoad:
    """Unpickling this calls `open(marker, "w")`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "best.pt"
    torch.save({"arch": "unet", "state_dict": {}, "payload": _RunsCodeOnLoad(marker)}, hostile)
    with pytest.raises(ValueError, match=f"{hostile}: checkpoint holds more than tensors"):
        load_torch_file(hostile)
    with pytest.raises(ValueError, match=str(hostile)):
        load_segmenter(hostile)
    assert not marker.exists()
    # The same file read without the guard really would have run the code.
    torch.load(hostile, weights_only=False)
    assert marker.exists()


def test_a_foreign_pickle_is_named(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=str(path)):
        load_torch_file(path, "init weights file")
