"""Per-image intensity normalization, applied identically at training and inference."""

from __future__ import annotations

import numpy as np

#: Percentiles mapped to 0 and 1 (as CSBDeep/StarDist's ``normalize``): robust to hot pixels and dark corners.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8


def normalize_image(image: np.ndarray) -> np.ndarray:
    """Map an image's 1st percentile to 0 and its 99.8th to 1 (no clipping), as float32.

    Works for any integer or float dtype, so 8-bit, 16-bit and float images of the same scene normalize alike.
    A constant image becomes all zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = high - low
    if scale <= 0:
        return np.zeros_like(image)
    return ((image - low) / scale).astype(np.float32)
