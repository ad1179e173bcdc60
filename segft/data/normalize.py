"""Per-image intensity normalization, applied identically at training and inference.

Two methods (``NORMALIZATIONS``), a setting of training that the checkpoint carries to inference:

* ``percentile`` maps the 1st percentile to 0 and the 99.8th to 1, as CSBDeep/StarDist's ``normalize``
  (Weigert et al. 2018): robust to hot pixels and dark corners, and it keeps the sign of the contrast, so a
  bright object on a dark background and a dark object on a bright one stay different inputs.
* ``deviation`` maps each pixel to its distance from the image's median (its background level, when objects
  cover less than half of the image), scaled so that the 99.8th percentile of that distance is 1. The sign of
  the contrast is gone: bright nuclei on black (fluorescence) and dark nuclei on a bright field (brightfield)
  both become bright on black, so a model trained on one polarity does not have to unlearn it for the other
  (the large shift of ``dsb2018-fluo-to-brightfield``). What it costs: structures darker and brighter than the
  background look alike.
"""

from __future__ import annotations

import numpy as np

#: Percentiles mapped to 0 and 1 (as CSBDeep/StarDist's ``normalize``): robust to hot pixels and dark corners.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8
#: Normalization methods by name (``TrainConfig.normalization``).
NORMALIZATIONS = ("percentile", "deviation")


def normalize_image(image: np.ndarray, method: str = "percentile") -> np.ndarray:
    """The image normalized by ``method`` (see the module docs), as float32, not clipped.

    Works for any integer or float dtype, so 8-bit, 16-bit and float images of the same scene normalize alike.
    A constant image becomes all zeros.

    Raises:
        ValueError: For an unknown method.
    """
    image = np.asarray(image, dtype=np.float32)
    if method == "percentile":
        low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
        return _scaled(image - low, high - low)
    if method == "deviation":
        distance = np.abs(image - np.median(image))
        return _scaled(distance, np.percentile(distance, HIGH_PERCENTILE))
    raise ValueError(f"unknown normalization {method!r}; choose from {list(NORMALIZATIONS)}")


def _scaled(shifted: np.ndarray, scale: float) -> np.ndarray:
    if scale <= 0:
        return np.zeros(shifted.shape, np.float32)
    return (shifted / scale).astype(np.float32)
