"""Overlay images that show where a prediction agrees with the ground truth.

Colours (colour-blind safe, on the grey image, 50 % opacity): true positive = green, false positive = magenta,
false negative = cyan; true negatives show the image only.
"""

from __future__ import annotations

import numpy as np

from segft.data.normalize import normalize_image

#: RGB colours of true positives, false positives and false negatives.
TP_COLOUR = (0, 200, 0)
FP_COLOUR = (230, 0, 230)
FN_COLOUR = (0, 220, 230)
OPACITY = 0.5


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) image of any dtype -> (H, W) uint8 for display (percentile-normalized, clipped)."""
    return (np.clip(normalize_image(image), 0, 1) * 255).astype(np.uint8)


def to_grey_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) image of any dtype -> (H, W, 3) uint8 for display."""
    return np.repeat(to_grey(image)[..., None], 3, axis=2)


def overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The image side by side with its TP/FP/FN overlay: (H, 2 W + 4, 3) uint8 RGB."""
    grey = to_grey_rgb(image)
    coloured = grey.astype(np.float32)
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    for where, colour in ((truth & prediction, TP_COLOUR), (~truth & prediction, FP_COLOUR), (truth & ~prediction, FN_COLOUR)):
        coloured[where] = (1 - OPACITY) * coloured[where] + OPACITY * np.array(colour, np.float32)
    gap = np.full((grey.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([grey, gap, coloured.astype(np.uint8)], axis=1)


def mask_png(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as a uint8 0/255 image that any viewer shows."""
    return mask.astype(np.uint8) * 255
