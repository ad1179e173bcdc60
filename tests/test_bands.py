"""Tests for segft.data.bands: page shapes from headers, and TIFF pages read in bands exactly as read_pages reads
them whole, whatever the storage."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from segft.data.bands import NotInBands, TiffBands, page_shapes
from segft.data.readers import read_pages

RNG = np.random.default_rng(0)
GREY = (RNG.random((150, 205)) * 255).astype(np.uint8)
RGB = (RNG.random((150, 205, 3)) * 255).astype(np.uint8)

STORAGE_CASES = {  # name: (array written, tifffile.imwrite keywords)
    "uncompressed, one strip": (GREY, {"photometric": "minisblack"}),
    "uncompressed, big-endian uint16": (GREY.astype(np.uint16) * 257, {"photometric": "minisblack",
                                                                          "byteorder": ">"}),
    "zlib strips": (GREY, {"photometric": "minisblack", "compression": "zlib", "rowsperstrip": 23}),
    "zlib tiles, cut at the border": (GREY, {"photometric": "minisblack", "compression": "zlib", "tile": (64, 48)}),
    "uint16 with a predictor": (GREY.astype(np.uint16) * 199, {"photometric": "minisblack", "compression": "zlib",
                                                                "predictor": True}),
    "float32, tiled": (GREY.astype(np.float32) / 7, {"photometric": "minisblack", "tile": (16, 16)}),
    "RGB, interleaved": (RGB, {"photometric": "rgb"}),
    "RGB, tiled": (RGB, {"photometric": "rgb", "compression": "zlib", "tile": (32, 32)}),
    "stack of 3": (np.stack([GREY, GREY // 2, GREY // 3]), {"photometric": "minisblack"}),
    "stack of 3, tiled": (np.stack([GREY, GREY // 2, GREY // 3]), {"photometric": "minisblack", "tile": (32, 64),
                                                                  "compression": "zlib"}),
}
ROW_RANGES = [(0, 150), (0, 1), (149, 150), (22, 24), (40, 117), (63, 65)]


@pytest.mark.parametrize("name", list(STORAGE_CASES))
def test_bands_are_the_rows_of_the_whole_page(tmp_path, name):
    array, keywords = STORAGE_CASES[name]
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, array, **keywords)
    whole = read_pages(path)
    with TiffBands(path, max_chunk_bytes=1 << 20) as bands:
        assert [page.shape for page in bands.pages] == [page.shape for page in whole]
        assert [page.dtype for page in bands.pages] == [page.dtype for page in whole]
        for index, page in enumerate(whole):
            for start, stop in ROW_RANGES:
                band = bands.rows(index, start, stop)
                assert band.dtype == page.dtype and np.array_equal(band, page[start:stop]), (index, start, stop)


def test_what_cannot_be_read_in_bands_says_why(tmp_path):
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate")
    with pytest.raises(NotInBands, match="sample planes"):
        TiffBands(planar, max_chunk_bytes=1 << 20)
    tall = tmp_path / "tall-strips.tif"
    tifffile.imwrite(tall, GREY, photometric="minisblack", compression="zlib", rowsperstrip=150)
    with pytest.raises(NotInBands, match="strips of 150 rows"):
        TiffBands(tall, max_chunk_bytes=10_000)
    with TiffBands(tall, max_chunk_bytes=1 << 20) as bands:  # small enough to decode: fine
        assert np.array_equal(bands.rows(0, 5, 9), GREY[5:9])


def _png(path, array):
    cv2.imencode(".png", array)[1].tofile(path)


SHAPE_CASES = {  # file name: writer
    "grey.png": lambda p: _png(p, GREY),
    "grey16.png": lambda p: _png(p, GREY.astype(np.uint16) * 200),
    "colour.png": lambda p: _png(p, RGB),
    "colour-alpha.png": lambda p: _png(p, np.dstack([RGB, GREY])),
    "grey.jpg": lambda p: cv2.imencode(".jpg", GREY)[1].tofile(p),
    "colour.jpeg": lambda p: cv2.imencode(".jpeg", RGB)[1].tofile(p),
    "progressive.jpg": lambda p: cv2.imencode(".jpg", RGB, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tofile(p),
    "stack.tif": lambda p: tifffile.imwrite(p, np.stack([GREY] * 4), photometric="minisblack"),
    "colour.tif": lambda p: tifffile.imwrite(p, RGB, photometric="rgb"),
    "planar.tiff": lambda p: tifffile.imwrite(p, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate"),
    "float.tif": lambda p: tifffile.imwrite(p, GREY.astype(np.float64)),
}


@pytest.mark.parametrize("name", list(SHAPE_CASES))
def test_page_shapes_from_the_header_match_the_decoded_pages(tmp_path, name):
    path = tmp_path / name
    SHAPE_CASES[name](path)
    shapes = [(page.shape, page.dtype) for page in page_shapes(path)]
    assert shapes == [(page.shape, page.dtype) for page in read_pages(path)]


@pytest.mark.parametrize("name, content", [("garbage.png", b"\x89PNG\r\n\x1a\n"), ("garbage.jpg", b"\xff\xd8\x00"),
                                           ("garbage.tif", b"II*\x00"), ("empty.png", b"")])
def test_an_unreadable_header_gives_none(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert page_shapes(path) is None
