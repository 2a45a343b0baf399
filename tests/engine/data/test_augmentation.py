"""The training recipes of engine/data/augmentation.py: same transform for image and mask, a
function of the generator alone, no mirroring, the paper's protocol untouched."""
import pytest
import torch

from engine.data.augmentation import ROBUST_RECIPE, augment, robust_batch
from protocol.config import AUGMENTATIONS, RunConfig, make_config


def square_batch(n: int = 8, size: int = 64):
    """Masks of an off-centre square, images bright there (1) and dark elsewhere (-1)."""
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[:, 12:36, 8:30] = 1
    return masks[:, None].float() * 2 - 1, masks


@pytest.mark.parametrize("name", ["affine", "robust"])
def test_image_and_mask_are_warped_together(name):
    images, masks = square_batch()
    warped, warped_masks = augment(name, images, masks, torch.Generator().manual_seed(3))
    assert warped.shape == images.shape and warped_masks.dtype == torch.int64
    assert set(warped_masks.unique().tolist()) <= {0, 1}
    assert not torch.equal(warped_masks, masks)
    # Every appearance change is monotonic, so the square stays the bright part of each image:
    # inside the warped mask the image is brighter than outside it, image by image.
    for image, mask in zip(warped[:, 0], warped_masks):
        inside, outside = image[mask == 1], image[mask == 0]
        assert len(inside) > 50
        assert inside.mean() > outside.mean() + 0.5


def test_a_mask_drawn_on_a_phantom_stays_on_its_structure():
    """Pixel by pixel: where the warped image is clearly the square or clearly not, the warped
    mask says the same (the robust recipe's intensities, noise aside, keep the square brightest)."""
    images, masks = square_batch(16)
    recipe = ROBUST_RECIPE.__class__(p_noise=0.0, p_blur=0.0, p_low_resolution=0.0)
    warped, warped_masks = robust_batch(images, masks, torch.Generator().manual_seed(0), recipe)
    for image, mask in zip(warped[:, 0], warped_masks):
        threshold = (image.max() + image.min()) / 2
        clear = (image - threshold).abs() > 0.25 * (image.max() - image.min())
        assert torch.equal(mask[clear], (image[clear] > threshold).long())


def test_robust_is_a_function_of_the_generator_alone():
    images, masks = square_batch()
    first = robust_batch(images, masks, torch.Generator().manual_seed(11))
    again = robust_batch(images, masks, torch.Generator().manual_seed(11))
    other = robust_batch(images, masks, torch.Generator().manual_seed(12))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_robust_output_is_standardised_and_never_mirrored():
    images, masks = square_batch(64)
    warped, warped_masks = robust_batch(images, masks, torch.Generator().manual_seed(5))
    flat = warped.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(64), atol=1e-4)
    assert torch.allclose(flat.std(1), torch.ones(64), atol=1e-3)
    # The square sits left of centre; rotation (±15°), zoom and shift never move its centre of
    # mass across the middle, as a mirror would.
    columns = torch.arange(64).float()
    centre = (warped_masks.float().sum(1) * columns).sum(1) / warped_masks.float().sum((1, 2))
    assert (centre < 32).all()


def test_none_is_the_papers_protocol_and_draws_nothing():
    images, masks = square_batch()
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    out_images, out_masks = augment("none", images, masks, generator)
    assert out_images is images and out_masks is masks
    assert torch.equal(generator.get_state(), state)


def test_the_recipe_is_a_config_field_with_robust_the_default():
    assert RunConfig().augmentation == "robust" and make_config("smoke").augmentation == "robust"
    assert set(AUGMENTATIONS) == {"none", "affine", "robust"}
    with pytest.raises(ValueError, match="augmentation must be one of"):
        make_config("smoke", overrides=["augmentation=flip"])
    # Configs written before the field existed read as the runs they were.
    old = {k: v for k, v in RunConfig().to_dict().items() if k != "augmentation"}
    assert RunConfig.from_dict({**old, "augment": False}).augmentation == "none"
    assert RunConfig.from_dict({**old, "augment": True}).augmentation == "affine"
    assert make_config("smoke", overrides=["augment=true"]).augmentation == "affine"
