"""The threshold arm (segft.threshold): Otsu per normalized image, polarity chosen on non-test images."""

from __future__ import annotations

import numpy as np
import pytest

from segft.data.imageset import ImageSet
from segft.threshold import ThresholdSegmenter, choose_polarity, otsu_mask, polarity_scores


def disc_set(bright_objects: bool, count: int = 3, seed: int = 0) -> ImageSet:
    """Noisy 64 x 64 images with a disc; the disc brighter (or darker) than the background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    images, masks = [], []
    for _ in range(count):
        mask = (yy - rng.integers(20, 44)) ** 2 + (xx - rng.integers(20, 44)) ** 2 < 12**2
        level = np.where(mask, 180, 60) if bright_objects else np.where(mask, 60, 180)
        images.append(np.clip(level + rng.normal(0, 10, mask.shape), 0, 255).astype(np.uint8))
        masks.append(mask)
    return ImageSet("set", tuple(f"{i}" for i in range(count)), tuple(images), tuple(masks), "synthetic")


@pytest.mark.parametrize("bright, polarity", [(True, "bright"), (False, "dark")])
def test_polarity_follows_the_images_it_is_chosen_on(bright, polarity):
    images = disc_set(bright)
    assert choose_polarity(images) == polarity
    scores = polarity_scores(images)
    assert scores[polarity] > 0.9 > scores[{"bright": "dark", "dark": "bright"}[polarity]]


def test_polarity_comes_from_training_images_not_test_images():
    """Chosen on bright-object training images, the rule stays bright on dark-object test images (and fails
    there): the test images never influence it."""
    train, test = disc_set(True), disc_set(False, seed=1)
    segmenter = ThresholdSegmenter(choose_polarity(train))
    assert segmenter.polarity == "bright"
    masks = [segmenter(image) for image in test.images]
    assert all(np.mean(m.astype(bool) == t) < 0.5 for m, t in zip(masks, test.masks))


def test_otsu_mask_is_binary_and_refuses_unknown_polarity():
    image = disc_set(True).images[0]
    mask = otsu_mask(image.astype(np.uint16) * 200, "bright")  # any dtype: normalized first
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    with pytest.raises(ValueError, match="unknown polarity 'up'"):
        otsu_mask(image, "up")
