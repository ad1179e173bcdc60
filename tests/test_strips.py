"""Tests for segft.strips: a TIFF segmented strip by strip gets the whole image's masks (the same normalization,
windows and blending), its pixels are checked over the whole page, and its masks come out as a tiled TIFF."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile

from conftest import perturbed_model
from segft.checkpoint import InferenceSettings, save_checkpoint
from segft.config import ModelConfig
from segft.data.bands import TiffBands
from segft.data.normalize import normalize_image
from segft.data.patches import tile_origins
from segft.data.readers import DataError, read_images, read_masks
from segft.pyfunc import SegmentationModel
from segft.strips import (SAMPLE_PIXELS, normalization, normalize_band, sample_step, scan_page, segment_tiff,
                          strip_rows, tiles)

CONFIG = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
RNG = np.random.default_rng(0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["percentile", "deviation"])
@pytest.mark.parametrize("image", [
    (RNG.random((37, 53)) * 255).astype(np.uint8),
    (RNG.random((37, 53)) * 65535).astype(np.uint16),
    (RNG.standard_normal((37, 53)) * 40).astype(np.float32),
    np.full((9, 9), 7, np.uint8),  # constant: all zeros
], ids=["uint8", "uint16", "float32", "constant"])
def test_whole_image_statistics_normalize_to_the_bit_as_normalize_image(image, method):
    expected = normalize_image(image, method)
    assert np.array_equal(normalize_band(image, method, *normalization(image, method)), expected)
    rows = normalize_band(image[5:20], method, *normalization(image, method))
    assert np.array_equal(rows, expected[5:20])


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="unknown normalization 'zscore'"):
        normalization(np.zeros((4, 4)), "zscore")


@pytest.mark.parametrize("height, width, step", [(2048, 2048, 1), (100, 40000, 1), (2049, 2048, 2), (4096, 4096, 2),
                                                 (4097, 4097, 3), (20000, 20000, 10)])
def test_the_sample_step_keeps_about_sample_pixels(height, width, step):
    assert sample_step(height, width) == step
    assert len(range(0, height, step)) * len(range(0, width, step)) <= SAMPLE_PIXELS


@pytest.mark.parametrize("height, patch_size, stride, windows", [
    (h, p, s, w) for h, (p, s), w in itertools.product([1, 20, 32, 33, 100, 257, 300], [(32, 16), (32, 22), (32, 32),
                                                                                        (32, 8), (16, 11)], [1, 2, 5])
])
def test_strips_keep_every_row_once_with_all_its_windows(height, patch_size, stride, windows):
    origins = tile_origins(height, patch_size, stride)
    strips = strip_rows(height, patch_size, stride, windows)
    kept = [row for _, _, start, stop in strips for row in range(start, stop)]
    assert kept == list(range(height))
    for top, bottom, start, stop in strips:
        # the windows the strip holds whole (the last one: all to the end, padded as the whole image is) ...
        inside = [o for o in origins if o >= top and (o + patch_size <= bottom or bottom == height)]
        # ... are exactly the windows its own grid places
        assert [top + o for o in tile_origins(bottom - top, patch_size, stride)] == inside
        for row in range(start, stop):  # and a kept row has all its windows in the strip
            assert all(o in inside for o in origins if o <= row < o + patch_size), (top, bottom, row)
    if len(origins) >= 2:  # the last strip reflects its bottom as the whole image does
        assert len([o for o in origins if o >= strips[-1][0]]) >= 2


def test_tiles_regroup_row_blocks_in_tiff_order():
    image = (RNG.random((70, 45)) * 255).astype(np.uint8)
    blocks = np.split(image, [3, 4, 30, 31, 69])
    found = list(tiles(blocks, 45, tile=16))
    assert len(found) == 5 * 3 and all(tile.shape == (16, 16) for tile in found)
    rebuilt = np.block([[found[3 * r + c] for c in range(3)] for r in range(5)])
    assert np.array_equal(rebuilt[:70, :45], image) and not rebuilt[70:].any() and not rebuilt[:, 45:].any()


@pytest.fixture(scope="module", params=["percentile", "deviation"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(perturbed_model(CONFIG), CONFIG, InferenceSettings(32, 0.5, request.param), folder)
    return SegmentationModel(folder, "cpu", "off")


GREY = (RNG.random((130, 171)) * 255).astype(np.uint8)
COLOUR = (RNG.random((130, 171, 3)) * 255).astype(np.uint8)
GREY_AS_COLOUR = np.repeat(GREY[..., None], 3, axis=2)
STRIP_CASES = {  # name: (array written, tifffile.imwrite keywords, predict params)
    "uint8, one uncompressed strip": (GREY, {"photometric": "minisblack"}, {}),
    "uint16, zlib strips, overlap 0.3": ((GREY.astype(np.uint16) * 250), {"photometric": "minisblack",
                                                                          "compression": "zlib",
                                                                          "rowsperstrip": 17}, {"overlap": 0.3}),
    "float32, tiles, no overlap": (GREY.astype(np.float32) / 3, {"photometric": "minisblack", "tile": (32, 16)},
                                   {"overlap": 0.0}),
    "colour": (COLOUR, {"photometric": "rgb"}, {}),
    "grey stored as colour": (GREY_AS_COLOUR, {"photometric": "rgb", "compression": "zlib", "rowsperstrip": 20},
                              {"threshold": 0.3}),
    "stack of two, overlap 0.75": (np.stack([GREY, 255 - GREY]), {"photometric": "minisblack"}, {"overlap": 0.75}),
}


@pytest.mark.parametrize("name", list(STRIP_CASES))
def test_strips_give_the_whole_image_masks(model, tmp_path, name):
    array, keywords, params = STRIP_CASES[name]
    path, masks = tmp_path / "image.tif", tmp_path / "masks.tif"
    tifffile.imwrite(path, array, **keywords)
    budget = 200_000  # strips of 3 window rows
    assert segment_tiff(path, model.segmenter(params), masks, budget) == len(read_images(path))
    with tifffile.TiffFile(masks) as written:
        assert all(page.is_tiled and page.dtype == np.uint8 for page in written.pages)
    assert np.unique(tifffile.imread(masks)).tolist() in ([0, 255], [0], [255])
    for image, mask in zip(read_images(path), read_masks(masks), strict=True):
        np.testing.assert_array_equal(mask, model.predict(image, params) > 0)


def test_non_finite_pixels_are_counted_over_the_whole_page(model, tmp_path):
    image = GREY.astype(np.float32)
    image[2, :5] = np.nan  # first strip
    image[120, 3] = np.inf  # last strip
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, image)
    with pytest.raises(DataError, match=rf"nan\.tif: 6 of {image.size} pixels are NaN or infinite"):
        segment_tiff(path, model.segmenter(), tmp_path / "masks.tif", 200_000)


def test_a_large_page_is_normalized_from_a_regular_subsample(tmp_path):
    image = (RNG.random((2100, 2050)) * 255).astype(np.uint8)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    with TiffBands(path, 1 << 20) as bands:
        scan = scan_page(bands, 0, rows_per_band=333)
    assert np.array_equal(scan.sample, image[::2, ::2])
