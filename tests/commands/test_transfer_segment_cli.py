"""`cxrsweep segment` on a transfer run's checkpoint applies M_A(G_BA(b)), as the run was evaluated."""
import numpy as np
from PIL import Image

from commands.main import main
from inference.stages import Segmenter
from models.loading import TranslateThenSegment


def test_segment_with_a_proposed_checkpoint_translates_first(tmp_path, capsys):
    from data_io.phantoms import synthesize

    folders = synthesize(tmp_path / "ph", n_source=10, n_target=10, source_size=64, target_size=64, seed=9)
    run = tmp_path / "run"
    # The paper's selection always keeps an adapted epoch; the default one may fall back to M_A
    # alone on so short a run, and this test is about the translate-first path.
    assert main(["train-transfer", "--method", "proposed", "--profile", "smoke", "--set", "image_size=32",
                 "--set", "translator_width=4", "--set", "num_threads=1", "--set", "selection=source",
                 "--jsrt", str(folders["jsrt"]),
                 "--scr", str(folders["scr"]), "--montgomery", str(folders["montgomery"]),
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]) == 0

    segmenter = Segmenter.from_checkpoint(run / "best.pt", device="cpu")
    assert isinstance(segmenter.model, TranslateThenSegment)
    assert segmenter.model.translator is not None
    assert "G_BA" in segmenter.arch

    image = sorted((folders["montgomery"] / "CXR_png").glob("*.png"))[0]
    out = tmp_path / "seg"
    assert main(["segment", str(run / "best.pt"), str(image), "--out", str(out), "--local"]) == 0
    mask = np.asarray(Image.open(out / "masks" / f"{image.stem}.png"))
    assert mask.shape == np.asarray(Image.open(image)).shape
    assert set(np.unique(mask)) <= {0, 255}

    # A plain segmentation checkpoint (M_A) is applied as it is, without a translator.
    plain = Segmenter.from_checkpoint(run / "m_a" / "best.pt", device="cpu")
    assert not isinstance(plain.model, TranslateThenSegment)
