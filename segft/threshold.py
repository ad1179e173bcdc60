"""The ``threshold`` arm: Otsu's threshold of each normalized image, no training: what a model must beat.

Otsu (1979, "A threshold selection method from gray-level histograms") picks, per image, the grey level that
best separates two classes. Whether the objects are the bright or the dark class (the polarity) is chosen once
per dataset, on images the models may train on (Dataset 1's training images, Dataset 2's fine-tuning pool), by
the higher mean Dice; test images never influence it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segft.data.imageset import ImageSet
from segft.data.normalize import normalize_image
from segft.metrics import confusion_counts

#: Which side of Otsu's threshold is foreground.
POLARITIES = ("bright", "dark")


def otsu_mask(image: np.ndarray, polarity: str) -> np.ndarray:
    """(H, W) uint8 mask (1 = foreground) of one image: normalized as for the models (``normalize_image``),
    clipped to [0, 1], quantized to 256 levels and split at Otsu's threshold (``cv2.THRESH_OTSU``).

    Raises:
        ValueError: For an unknown polarity.
    """
    if polarity not in POLARITIES:
        raise ValueError(f"unknown polarity {polarity!r}; choose from {list(POLARITIES)}")
    grey = np.round(np.clip(normalize_image(image), 0, 1) * 255).astype(np.uint8)
    mode = cv2.THRESH_BINARY if polarity == "bright" else cv2.THRESH_BINARY_INV
    _, mask = cv2.threshold(grey, 0, 1, mode | cv2.THRESH_OTSU)
    return mask


def polarity_scores(image_set: ImageSet) -> dict[str, float]:
    """Mean Dice of each polarity's Otsu masks on ``image_set``."""
    return {polarity: float(np.mean([confusion_counts(otsu_mask(image, polarity), mask).dice
                                     for image, mask in zip(image_set.images, image_set.masks)]))
            for polarity in POLARITIES}


def choose_polarity(image_set: ImageSet) -> str:
    """The polarity with the higher mean Dice on ``image_set`` (training or pool images, never test images);
    ``bright`` on a tie."""
    scores = polarity_scores(image_set)
    return max(POLARITIES, key=lambda p: (scores[p], p == "bright"))


@dataclass(frozen=True)
class ThresholdSegmenter:
    """A segmenter with the interface of ``SlidingWindowSegmenter``: ``segmenter(image) -> (H, W) uint8 mask``."""

    polarity: str

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return otsu_mask(image, self.polarity)
