"""Each network can fit four phantom radiographs: the loss falls clearly within a few dozen steps."""
import pytest
import torch
import torch.nn.functional as F

from engine.evaluation.metrics import jaccard_per_image
from models.registry import build_segmenter

STEPS = 60
# Dropout is a regulariser: it is off here, where the point is that the network can fit at all.
OVERFIT_KWARGS = {"fcn": {"dropout": 0.0}}


@pytest.mark.parametrize("name", ["fcn", "segnet", "unet"])
def test_network_overfits_four_phantoms(name, four_phantoms):
    images, masks = four_phantoms
    torch.manual_seed(0)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(masks).long()
    model = build_segmenter(name, width=0.125, **OVERFIT_KWARGS.get(name, {})).train()
    # A larger step than the paper's 1e-4 so that a few dozen steps suffice.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(STEPS):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    assert jaccard_per_image(predicted, masks).mean() > 0.5
