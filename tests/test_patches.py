"""Tests for segft.data.patches (grid, padding, extraction, blending weight) and segft.data.normalize.

Blending itself is tested with inference (tests/test_inference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from segft.data.normalize import normalize_image
from segft.data.patches import extract_patches, gaussian_weight, grid, pad_to, tile_origins

TILE_CASES = [  # length, patch size, stride, expected origins
    (20, 32, 32, [0]),  # shorter than a patch: one padded patch
    (1, 32, 16, [0]),
    (32, 32, 32, [0]),  # exactly one patch
    (32, 32, 16, [0]),  # exactly one patch, no useless second window
    (33, 32, 32, [0, 32]),  # one pixel more: a second patch, mostly padding
    (64, 32, 32, [0, 32]),
    (75, 32, 32, [0, 32, 64]),  # odd length: 64 + 32 = 96 >= 75
    (43, 32, 32, [0, 32]),
    (75, 32, 16, [0, 16, 32, 48]),  # stride < patch: 48 + 32 = 80 >= 75
    (43, 32, 16, [0, 16]),  # 16 + 32 = 48 >= 43
    (64, 32, 16, [0, 16, 32]),  # 32 + 32 = 64 ends exactly at the border
    (65, 32, 16, [0, 16, 32, 48]),
    (5, 2, 1, [0, 1, 2, 3]),  # stride 1
    (7, 7, 1, [0]),
    (558, 128, 128, [0, 128, 256, 384, 512]),  # the synthetic images' height
    (136, 128, 128, [0, 128]),  # ... and width
    (136, 128, 64, [0, 64]),
]


@pytest.mark.parametrize("length, patch_size, stride, expected", TILE_CASES)
def test_tile_origins(length, patch_size, stride, expected):
    assert tile_origins(length, patch_size, stride) == expected


@pytest.mark.parametrize("patch_size, stride", [(32, 32), (32, 16), (32, 7), (8, 1), (5, 3)])
def test_tile_origins_cover_every_length_with_the_fewest_windows(patch_size, stride):
    for length in range(1, 100):
        origins = tile_origins(length, patch_size, stride)
        assert origins[0] == 0 and all(b - a == stride for a, b in zip(origins, origins[1:]))
        assert origins[-1] + patch_size >= length  # the last window reaches the end
        if len(origins) > 1:
            assert origins[-2] + patch_size < length  # ... and one fewer would not


@pytest.mark.parametrize("patch_size, stride", [(32, 0), (32, -1), (32, 33), (1, 2)])
def test_stride_out_of_range_raises(patch_size, stride):
    with pytest.raises(ValueError, match=rf"stride must be between 1 and the patch size {patch_size}, got {stride}"):
        tile_origins(100, patch_size, stride)


@pytest.mark.parametrize("stride", [0, 33])
def test_extract_patches_checks_the_stride(stride):
    with pytest.raises(ValueError, match="stride must be between 1 and the patch size 32"):
        extract_patches(np.zeros((40, 40), np.float32), 32, stride)


GRID_CASES = [  # shape, patch size, stride, number of patches, padded shape
    ((75, 43), 32, 32, 3 * 2, (96, 64)),
    ((75, 43), 32, 16, 4 * 2, (80, 48)),
    ((32, 32), 32, 32, 1, (32, 32)),
    ((10, 50), 32, 32, 1 * 2, (32, 64)),
    ((558, 136), 128, 128, 5 * 2, (640, 256)),
]


@pytest.mark.parametrize("shape, patch_size, stride, count, padded", GRID_CASES)
def test_grid_covers_the_whole_image(shape, patch_size, stride, count, padded):
    origins, padded_shape = grid(shape, patch_size, stride)
    assert len(origins) == count and padded_shape == padded
    covered = np.zeros(padded_shape, bool)
    for r, c in origins:
        covered[r : r + patch_size, c : c + patch_size] = True
    assert covered[: shape[0], : shape[1]].all()
    assert covered.all()  # the padded shape is exactly what the patches need


def test_extract_patches_cuts_at_the_origins():
    image = np.arange(75 * 43, dtype=np.float32).reshape(75, 43)
    patches, origins = extract_patches(image, 32, 16)
    assert origins[:3] == [(0, 0), (0, 16), (16, 0)]  # row-major
    for patch, (r, c) in zip(patches, origins):
        inside = image[r : r + 32, c : c + 32]
        assert np.array_equal(patch[: inside.shape[0], : inside.shape[1]], inside)


PAD_CASES = [  # array, target shape, expected
    (np.array([[1, 2, 3], [4, 5, 6]]), (4, 5), np.array([
        [1, 2, 3, 2, 1],
        [4, 5, 6, 5, 4],
        [1, 2, 3, 2, 1],  # reflection about the last row/column, which is not repeated
        [4, 5, 6, 5, 4],
    ])),
    (np.array([[1, 2, 3], [4, 5, 6]]), (2, 3), np.array([[1, 2, 3], [4, 5, 6]])),  # already the size
    (np.array([[1, 2, 3]]), (3, 4), np.array([[1, 2, 3, 3]] * 3)),  # a 1-pixel axis: symmetric (edge repeated)
    (np.array([[7]]), (2, 2), np.full((2, 2), 7)),
    (np.arange(4).reshape(2, 2), (2, 7), np.array([[0, 1, 0, 1, 0, 1, 0], [2, 3, 2, 3, 2, 3, 2]])),
]


@pytest.mark.parametrize("array, shape, expected", PAD_CASES)
def test_pad_to_reflects_at_the_bottom_and_right(array, shape, expected):
    padded = pad_to(array, shape)
    assert padded.shape == shape and np.array_equal(padded, expected)


def test_pad_to_keeps_leading_axes():
    stack = np.stack([np.array([[1, 2, 3], [4, 5, 6]]), np.array([[7, 8, 9], [1, 2, 3]])])
    padded = pad_to(stack, (3, 4))
    assert padded.shape == (2, 3, 4)
    assert np.array_equal(padded[1], [[7, 8, 9, 8], [1, 2, 3, 2], [7, 8, 9, 8]])


@pytest.mark.parametrize("patch_size", [1, 2, 7, 32, 128])
def test_gaussian_weight_peaks_at_1_in_the_centre_and_is_positive_and_symmetric(patch_size):
    weight = gaussian_weight(patch_size)
    assert weight.shape == (patch_size, patch_size) and weight.dtype == np.float32
    assert weight.max() == pytest.approx(1.0)
    assert (weight >= 1e-3).all()  # every pixel keeps some weight, so blending never divides by 0
    assert np.array_equal(weight, weight.T)
    assert np.array_equal(weight, weight[::-1]) and np.array_equal(weight, weight[:, ::-1])
    centre = (patch_size - 1) // 2
    assert weight[centre, centre] == pytest.approx(1.0)
    row = weight[centre, : centre + 1]
    assert (np.diff(row) >= 0).all()  # rising towards the centre


def test_gaussian_weight_uses_sigma_of_one_eighth_of_the_patch():
    weight = gaussian_weight(33)  # odd: centre pixel 16, sigma = 33 / 8 = 4.125
    # pixel (16, 20) is 4 pixels from the centre along a row: exp(-4 ** 2 / (2 sigma ** 2)) * exp(0)
    assert weight[16, 20] == pytest.approx(np.exp(-16 / (2 * 4.125**2)), rel=1e-5)
    assert gaussian_weight(128).min() == pytest.approx(1e-3)  # corners are clamped, not 0
    assert gaussian_weight(33, sigma_scale=0.25)[16, 20] == pytest.approx(np.exp(-16 / (2 * 8.25**2)), rel=1e-5)


# --------------------------------------------------------------------------------------------- normalize

def scene() -> np.ndarray:
    """A random 8-bit scene."""
    return np.random.default_rng(0).integers(0, 256, (48, 40)).astype(np.uint8)


SAME_SCENE_CASES = [  # the same scene as another dtype
    ("uint16", lambda s: s.astype(np.uint16) * 257),  # 0..255 -> 0..65535
    ("uint16 low bits", lambda s: s.astype(np.uint16) * 16),  # 12-bit camera in a 16-bit file
    ("float32 0..1", lambda s: (s / 255).astype(np.float32)),
    ("float64 0..1", lambda s: s / 255.0),
    ("int16 shifted", lambda s: s.astype(np.int16) - 128),
]


@pytest.mark.parametrize("name, convert", SAME_SCENE_CASES)
def test_normalize_image_is_the_same_for_any_dtype_of_one_scene(name, convert):
    reference = normalize_image(scene())
    converted = normalize_image(convert(scene()))
    assert converted.dtype == np.float32
    assert np.allclose(converted, reference, atol=1e-5)


def test_normalize_image_maps_the_1st_and_99_8th_percentiles_to_0_and_1():
    ramp = np.arange(1001, dtype=np.uint16)  # percentiles by hand: 1 % -> 10, 99.8 % -> 998
    normalized = normalize_image(ramp)
    assert normalized[10] == pytest.approx(0.0, abs=1e-6) and normalized[998] == pytest.approx(1.0)
    assert normalized[0] == pytest.approx(-10 / 988)  # no clipping
    assert normalized[1000] == pytest.approx(990 / 988)
    assert normalized[504] == pytest.approx(494 / 988)


@pytest.mark.parametrize("image", [
    np.full((8, 8), 200, np.uint8),
    np.zeros((8, 8), np.uint16),
    np.full((3, 5), -2.5, np.float64),
])
def test_normalize_constant_image_gives_float32_zeros(image):
    normalized = normalize_image(image)
    assert normalized.dtype == np.float32 and normalized.shape == image.shape
    assert not normalized.any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_normalize_image_returns_float32(dtype):
    assert normalize_image(scene().astype(dtype)).dtype == np.float32


def test_normalize_image_does_not_modify_its_input():
    image = scene().astype(np.float32)
    copy = image.copy()
    normalize_image(image)
    assert np.array_equal(image, copy)


def test_deviation_normalization_is_blind_to_the_sign_of_the_contrast():
    bright_on_dark = scene().astype(np.float32)
    dark_on_bright = bright_on_dark.max() + bright_on_dark.min() - bright_on_dark  # the same scene, inverted
    assert np.allclose(normalize_image(bright_on_dark, "deviation"), normalize_image(dark_on_bright, "deviation"),
                       atol=1e-5)
    assert not np.allclose(normalize_image(bright_on_dark), normalize_image(dark_on_bright), atol=0.1)


def test_deviation_normalization_maps_the_median_to_0_and_the_99_8th_percentile_of_the_distance_to_1():
    ramp = np.arange(1001, dtype=np.uint16)  # median 500; distances 0..500, each twice but 0 and 500 once
    normalized = normalize_image(ramp, "deviation")
    distance_998 = np.percentile(np.abs(ramp - 500.0), 99.8)
    assert normalized[500] == 0 and normalized[0] == normalized[1000] == pytest.approx(500 / distance_998)
    assert normalized[400] == normalized[600] == pytest.approx(100 / distance_998)
    assert normalize_image(np.full((4, 4), 7, np.uint8), "deviation").dtype == np.float32
    assert not normalize_image(np.full((4, 4), 7, np.uint8), "deviation").any()


def test_an_unknown_normalization_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="unknown normalization 'zscore'.*percentile.*deviation"):
        normalize_image(scene(), "zscore")
