"""A grid of square patches covering a whole image, and the weight that blends overlapping patches.

Training cuts each image into ``patch_size`` patches on a grid with stride = patch size (``extract_patches``);
inference walks the grid with a stride of ``patch_size * (1 - overlap)`` and blends overlapping predictions
(``segft.inference``). In both cases the grid covers the whole image and the image is padded at its bottom and
right border (reflection) so the last patch fits.
"""

from __future__ import annotations

import math

import numpy as np


def tile_origins(length: int, patch_size: int, stride: int) -> list[int]:
    """Start offsets of patches along one axis of ``length`` pixels; the last one may run past the end.

    Raises:
        ValueError: If ``stride`` is not in [1, patch_size].
    """
    if not 1 <= stride <= patch_size:
        raise ValueError(f"stride must be between 1 and the patch size {patch_size}, got {stride}")
    count = math.ceil(max(length - patch_size, 0) / stride) + 1
    return [i * stride for i in range(count)]


def grid(shape: tuple[int, int], patch_size: int, stride: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Patch origins (row, col) covering an image of ``shape``, and the padded shape they need."""
    rows = tile_origins(shape[0], patch_size, stride)
    cols = tile_origins(shape[1], patch_size, stride)
    return [(r, c) for r in rows for c in cols], (rows[-1] + patch_size, cols[-1] + patch_size)


def pad_to(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad the last two axes at the bottom and right to ``shape`` by reflection (symmetric for 1-pixel axes)."""
    pad_h, pad_w = shape[0] - array.shape[-2], shape[1] - array.shape[-1]
    widths = [(0, 0)] * (array.ndim - 2) + [(0, pad_h), (0, pad_w)]
    mode = "reflect" if min(array.shape[-2:]) > 1 else "symmetric"
    return np.pad(array, widths, mode=mode)


def extract_patches(array: np.ndarray, patch_size: int, stride: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a 2-D array into patches (N, patch_size, patch_size) and return them with their origins."""
    origins, padded_shape = grid(array.shape, patch_size, stride)
    padded = pad_to(array, padded_shape)
    patches = np.stack([padded[r : r + patch_size, c : c + patch_size] for r, c in origins])
    return patches, origins


def gaussian_weight(patch_size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Blending weight that trusts patch centres more than borders (nnU-Net: sigma = patch_size / 8)."""
    axis = np.arange(patch_size, dtype=np.float32) - (patch_size - 1) / 2
    g = np.exp(-(axis**2) / (2 * (patch_size * sigma_scale) ** 2))
    weight = np.outer(g, g)
    weight /= weight.max()
    return np.maximum(weight, 1e-3).astype(np.float32)  # never 0: every pixel stays covered
