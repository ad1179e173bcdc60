"""Overlay images that show where a prediction agrees with the ground truth.

Colours (colour-blind safe, on the grey image, 50 % opacity): true positive = green, false positive = magenta,
false negative = cyan; true negatives show the image only.
"""

from __future__ import annotations

import cv2
import numpy as np

from segft.data.normalize import normalize_image

#: RGB colours of true positives, false positives and false negatives.
TP_COLOUR = (0, 200, 0)
FP_COLOUR = (230, 0, 230)
FN_COLOUR = (0, 220, 230)
#: RGB colour of a predicted contour drawn without ground truth (``contour_overlay``).
CONTOUR_COLOUR = (255, 215, 0)
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


def contour_overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = CONTOUR_COLOUR,
                    thickness: int = 1) -> np.ndarray:
    """The grey image with the outline of ``mask`` (nonzero = foreground) drawn on it: (H, W, 3) uint8 RGB.

    Raises:
        ValueError: If the image is not 2-D or the shapes differ.
    """
    if image.ndim != 2 or image.shape != mask.shape:
        raise ValueError(f"need a 2-D image and a mask of the same shape, got {image.shape} and {mask.shape}")
    return draw_outline(to_grey_rgb(image), mask, colour, thickness)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """Draw the outline of ``mask`` (nonzero = foreground) on the (H, W, 3) uint8 image ``rgb``, in place."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(rgb, contours, -1, colour, thickness)
