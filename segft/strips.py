"""Segmenting a TIFF image too large to hold whole, strip by strip, into a tiled mask TIFF.

Memory follows the strip, not the image: a strip of rows is read (``segft.data.bands.TiffBands``), normalized,
segmented and thresholded, and its mask rows are written as they come, in 256 x 256 zlib-compressed tiles. The
result is the whole image's, by these rules:

* **Windows**: the same grid, Gaussian blending and threshold as for a whole image (``segft.inference``). A strip
  is a run of whole window rows; neighbouring strips share the window rows that overlap both (computed twice), and
  a strip keeps only the rows all of whose windows it holds, so every kept probability is the whole image's.
* **Normalization**: the statistics of ``segft.data.normalize.normalize_image`` (percentiles, median), taken from
  a regular subsample, every s-th pixel of every s-th row with s = ceil(sqrt(pixels / ``SAMPLE_PIXELS``)), about
  2048 x 2048 pixels at most: s = 1 (every pixel, the same statistics) up to 2048 x 2048 pixels.
* **Pixels**: a first pass over the page applies ``segft.data.readers.to_single_channel``'s rules to the whole
  page (grey stored as colour is decided over all of it; NaN or infinite pixels are counted over all of it and
  refused) before any strip is segmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import tifffile

from segft.data.bands import TiffBands
from segft.data.normalize import HIGH_PERCENTILE, LOW_PERCENTILE, NORMALIZATIONS
from segft.data.patches import tile_origins
from segft.data.readers import (DataError, is_grey_colour, non_finite_error, non_finite_pixels, supported_page,
                                tifffile_log, to_single_channel)
from segft.inference import SlidingWindowSegmenter, sliding_window_predict, window_stride
from segft.overlays import mask_png

#: Most pixels the normalization statistics of an image segmented in strips are taken from (2048 x 2048).
SAMPLE_PIXELS = 2048 * 2048
#: Side of the square tiles of a mask TIFF written in strips.
TILE = 256
#: Peak bytes per pixel of segmenting pixels in memory (the page as stored, its float32 and float64 normalization
#: temporaries, the padded image and the two blending sums): sizes the strips, and estimates a whole image.
BYTES_PER_PIXEL = 32


def sample_step(height: int, width: int) -> int:
    """The subsampling step s of the normalization statistics of a ``height`` x ``width`` image:
    ceil(sqrt(height * width / SAMPLE_PIXELS)), at least 1."""
    return max(1, math.ceil(math.sqrt(height * width / SAMPLE_PIXELS)))


def normalization(sample: np.ndarray, method: str) -> tuple[np.floating, np.floating]:
    """``(centre, scale)`` that ``normalize_image(image, method)`` computes from an image whose pixels are
    ``sample``: percentile: (1st percentile, 99.8th - 1st); deviation: (median, 99.8th percentile of the distance
    to it). ``tests/test_strips.py`` checks, on whole images, that ``normalize_band`` then gives
    ``normalize_image``'s result to the bit.

    Raises:
        ValueError: For an unknown method.
    """
    image = np.asarray(sample, dtype=np.float32)
    if method == "percentile":
        low, high = np.percentile(image, [LOW_PERCENTILE, HIGH_PERCENTILE])
        return low, high - low
    if method == "deviation":
        median = np.median(image)
        return median, np.percentile(np.abs(image - median), HIGH_PERCENTILE)
    raise ValueError(f"unknown normalization {method!r}; choose from {list(NORMALIZATIONS)}")


def normalize_band(band: np.ndarray, method: str, centre: np.floating, scale: np.floating) -> np.ndarray:
    """Rows of an image normalized with the whole image's ``normalization``, as float32."""
    shifted = np.asarray(band, dtype=np.float32) - centre
    if method == "deviation":
        shifted = np.abs(shifted)
    if scale <= 0:
        return np.zeros(shifted.shape, np.float32)
    return (shifted / scale).astype(np.float32)


def strip_rows(height: int, patch_size: int, stride: int, windows: int) -> list[tuple[int, int, int, int]]:
    """The strips of an image ``height`` rows high: ``(top, bottom, keep_from, keep_to)`` each, rows
    ``top:bottom`` read and segmented and rows ``keep_from:keep_to`` kept; the kept rows tile ``0:height``.

    A strip holds ``windows`` window rows (at least as many as overlap one row); the next one starts again at the
    first window row whose windows reach into rows not kept yet. The last strip holds at least two window rows
    (when the image has two), so that reflecting its bottom rows pads it as the whole image's are.
    """
    origins = tile_origins(height, patch_size, stride)
    shared = math.ceil(patch_size / stride) - 1  # window rows overlapping the first row the next strip keeps
    windows = max(windows, shared + 1)
    strips, first, kept = [], 0, 0
    while kept < height:
        last = min(first + windows, len(origins))
        if last == len(origins):
            first = min(first, max(len(origins) - 2, 0))
        stop = origins[last] if last < len(origins) else height
        strips.append((origins[first], min(origins[last - 1] + patch_size, height), kept, stop))
        first, kept = last - shared, stop
    return strips


@dataclass(frozen=True)
class PageScan:
    """What the first pass over a page found: the grey-as-colour decision and the normalization sample."""

    grey: bool | None
    sample: np.ndarray


def scan_page(bands: TiffBands, index: int, rows_per_band: int) -> PageScan:
    """Read page ``index`` band by band: check its pixels, decide grey-as-colour, take the normalization sample.

    Raises:
        DataError: For an unsupported pixel type or shape, or NaN or infinite pixels (counted over the page).
    """
    height, width = bands.pages[index].shape[:2]
    step, grey, bad, samples = sample_step(height, width), True, 0, []
    for start in range(0, height, rows_per_band):
        band = supported_page(bands.rows(index, start, min(height, start + rows_per_band)), bands.path)
        grey = grey and is_grey_colour(band)
        if band.dtype.kind == "f":
            bad += non_finite_pixels(to_single_channel(band, bands.path, check_finite=False))
        samples.append(band[(-start) % step :: step, ::step])
    if bad:
        raise non_finite_error(bands.path, bad, height * width)
    colour = len(bands.pages[index].shape) == 3
    return PageScan(grey if colour else None, to_single_channel(np.concatenate(samples), bands.path, grey=grey))


def segment_page(bands: TiffBands, index: int, segmenter: SlidingWindowSegmenter, scan: PageScan,
                 rows_per_strip: int) -> Iterator[np.ndarray]:
    """The mask of page ``index`` (uint8, 0 or 255), a block of rows at a time from top to bottom."""
    height = bands.pages[index].shape[0]
    size, stride = segmenter.patch_size, window_stride(segmenter.patch_size, segmenter.overlap)
    centre, scale = normalization(scan.sample, segmenter.normalization)
    segmenter.model.eval()
    for top, bottom, keep_from, keep_to in strip_rows(height, size, stride, (rows_per_strip - size) // stride + 1):
        band = to_single_channel(bands.rows(index, top, bottom), bands.path, grey=scan.grey)
        probabilities = sliding_window_predict(
            segmenter.model, normalize_band(band, segmenter.normalization, centre, scale), size, segmenter.overlap,
            segmenter.batch_size, segmenter.device, segmenter.autocast)
        yield mask_png(probabilities[keep_from - top : keep_to - top] > segmenter.threshold)


def tiles(blocks: Iterable[np.ndarray], width: int, tile: int = TILE) -> Iterator[np.ndarray]:
    """Blocks of rows of a page (top to bottom) as ``tile`` x ``tile`` tiles in TIFF order (row of tiles by row
    of tiles, left to right); tiles past the border are zero-padded."""
    pending = np.empty((0, width), np.uint8)
    for block in blocks:
        pending = np.concatenate([pending, block])
        while len(pending) >= tile:
            yield from _row_of_tiles(pending[:tile], tile)
            pending = pending[tile:]
    if len(pending):
        yield from _row_of_tiles(pending, tile)


def _row_of_tiles(rows: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for left in range(0, rows.shape[1], tile):
        padded = np.zeros((tile, tile), np.uint8)
        part = rows[:, left : left + tile]
        padded[: part.shape[0], : part.shape[1]] = part
        yield padded


def segment_tiff(path: Path, segmenter: SlidingWindowSegmenter, mask_file: Path, budget_bytes: int,
                 on_page: Callable[[], None] = lambda: None) -> int:
    """Segment every page of a TIFF file strip by strip into ``mask_file``, a tiled TIFF of 0/255 masks (one
    page per page, as ``segft.predict`` writes them). Strips hold at most half of ``budget_bytes`` of pixels at
    ``BYTES_PER_PIXEL`` (at least one window row). Returns the number of pages.

    Raises:
        DataError: If a page's pixels are refused (``scan_page``), or the file turns out damaged.
        segft.data.bands.NotInBands: If the file cannot be read in bands.
    """
    with tifffile_log() as complaints, TiffBands(path, budget_bytes // 4) as bands, \
            tifffile.TiffWriter(mask_file) as writer:
        for index, page in enumerate(bands.pages):
            height, width = page.shape[:2]
            rows = max(1, budget_bytes // 2 // (BYTES_PER_PIXEL * width))
            scan = scan_page(bands, index, rows)
            if complaints:
                raise DataError(f"{path}: unreadable or corrupt image file (tifffile: {complaints[0]})")
            writer.write(tiles(segment_page(bands, index, segmenter, scan, rows), width), shape=(height, width),
                         dtype=np.uint8, tile=(TILE, TILE), photometric="minisblack", compression="zlib")
            on_page()
    return len(bands.pages)
