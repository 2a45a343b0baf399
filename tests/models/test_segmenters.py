"""The three segmenters: registry, output shapes at several sizes and widths, saving and loading."""
import pytest
import torch

from models.registry import build_segmenter, list_segmenters, load_segmenter, segmenter_defaults

NETWORKS = ("fcn", "segnet", "unet")


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_three_papers_networks():
    assert list_segmenters() == sorted(NETWORKS)


@pytest.mark.parametrize("name", NETWORKS)
def test_defaults_are_data(name):
    defaults = segmenter_defaults(name)
    assert defaults and all(isinstance(k, str) for k in defaults)
    defaults.clear()  # a copy: the registry's own defaults must not change
    assert segmenter_defaults(name)


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("width,size,batch", [(0.125, 32, 1), (0.125, 96, 2), (0.25, 64, 3), (0.0625, 160, 1)])
def test_logits_match_input_size(name, width, size, batch):
    model = build_segmenter(name, width=width).eval()
    with torch.no_grad():
        logits = model(torch.randn(batch, 1, size, size))
    assert logits.shape == (batch, 2, size, size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NETWORKS)
def test_channels_and_classes_are_respected(name):
    model = build_segmenter(name, width=0.125, in_channels=3, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)


@pytest.mark.parametrize("name", NETWORKS)
def test_width_scales_parameters(name):
    small, large = (parameter_count(build_segmenter(name, width=w)) for w in (0.125, 0.5))
    # Convolutions grow with the square of the width.
    assert 8 < large / small < 17


def test_full_width_unet_has_64_base_channels():
    model = build_segmenter("unet", width=1.0)
    assert model.encoders[0][0].out_channels == 64
    assert len(model.upsamplers) == 4


def test_segnet_upsamples_with_pooling_indices():
    model = build_segmenter("segnet", width=0.125)
    assert any(isinstance(m, torch.nn.MaxUnpool2d) for m in model.modules())


@pytest.mark.parametrize("name", NETWORKS)
def test_rejects_sizes_the_network_cannot_pool(name):
    with pytest.raises(ValueError, match=f"{name}: .*multiples of"):
        build_segmenter(name, width=0.125)(torch.randn(1, 1, 40, 64))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="fcn, segnet, unet"):
        build_segmenter("resnet")


def test_load_segmenter_rebuilds_the_saved_network(tmp_path):
    from engine.runtime.checkpoints import network_checkpoint, save_atomic

    model = build_segmenter("segnet", width=0.125).eval()
    path = save_atomic(network_checkpoint(model, "segnet", {"width": 0.125, "in_channels": 1, "num_classes": 2},
                                          {}, "heart", 64, "per_image_standardisation", 3), tmp_path / "best.pt")
    loaded = load_segmenter(path)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_segmenter_names_a_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_segmenter(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_segmenter(junk)
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt.*missing arch"):
        load_segmenter(tmp_path / "foreign.pt")
