"""Images too large to decode whole: their page shapes from the file header, and TIFF pages read as bands of rows.

``segft predict`` segments such an image strip by strip (``segft.strips``). Only TIFF can be read in bands:
uncompressed pages are read row by row from their offset, and compressed or tiled ones by decoding only the strips
or tiles a band overlaps. PNG and JPEG are decoded whole by OpenCV, so of them only the size is read here, from the
header, to refuse one too large before anything is decoded.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from segft.data.readers import tifffile_log

#: PNG colour type -> channels OpenCV decodes it to with ``IMREAD_UNCHANGED`` (a palette becomes BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
#: JPEG start-of-frame markers (baseline, progressive, lossless...): all of 0xC0-0xCF but DHT, JPG and DAC.
_JPEG_FRAMES = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class PageShape:
    """One page as ``segft.data.readers.read_pages`` returns it: (H, W) or (H, W, C), and its pixel type."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def page_shapes(path: str | Path) -> list[PageShape] | None:
    """The pages of an image file, from its header alone; None when the header cannot be read (decoding the file
    then says why)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _tiff_shapes(path)
        with path.open("rb") as file:
            head = file.read(1 << 16)
        return [_png_shape(head) if head.startswith(b"\x89PNG\r\n\x1a\n") else _jpeg_shape(head)]
    except (OSError, ValueError, struct.error, tifffile.TiffFileError):
        return None


def _tiff_shapes(path: Path) -> list[PageShape]:
    shapes = []
    with tifffile_log(), tifffile.TiffFile(path) as tif:
        for series in tif.series:
            plane = _plane(series.shape, series.axes)
            shapes += [PageShape(plane, np.dtype(series.dtype))] * (math.prod(series.shape) // math.prod(plane))
    return shapes


def _plane(shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
    """(H, W) or (H, W, S) of a series, as ``read_pages`` moves the samples axis last."""
    if "S" in axes:
        return (*[size for size, axis in zip(shape, axes) if axis != "S"][-2:], shape[axes.index("S")])
    return tuple(shape[-2:])


def _png_shape(head: bytes) -> PageShape:
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])  # IHDR, always the first chunk
    return _page((height, width, _PNG_CHANNELS[colour]), np.uint16 if depth == 16 else np.uint8)


def _page(shape: tuple[int, int, int], dtype: type) -> PageShape:
    """OpenCV decodes one channel as (H, W)."""
    return PageShape(shape[:2] if shape[2] == 1 else shape, np.dtype(dtype))


def _jpeg_shape(head: bytes) -> PageShape:
    position = 2  # after SOI
    while position + 9 < len(head):
        if head[position] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker, length = head[position + 1], struct.unpack(">H", head[position + 2 : position + 4])[0]
        if marker in _JPEG_FRAMES:
            height, width, channels = struct.unpack(">HHB", head[position + 5 : position + 10])
            return _page((height, width, channels), np.uint8)
        position += 2 + length
    raise ValueError("no JPEG frame header in the first 64 KiB")


class NotInBands(ValueError):
    """A TIFF file whose pages cannot be read a band of rows at a time; the message says why."""


class TiffBands:
    """The pages of a TIFF file, in ``read_pages``'s order, read a band of rows at a time.

    Use as a context manager; ``pages`` lists the page shapes and ``rows(page, start, stop)`` reads rows
    ``start:stop`` of one page as ``read_pages`` would return them.

    Raises:
        NotInBands: For pages stored by sample planes or in depth, a series that is not a sequence of pages,
            or strips (tiles) so tall that one row of them holds more than ``max_chunk_bytes``.
    """

    def __init__(self, path: str | Path, max_chunk_bytes: int) -> None:
        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            self._pages = [page for series in self._tif.series for page in _series_pages(series, max_chunk_bytes)]
        except BaseException:
            self._tif.close()
            raise
        self.pages = [PageShape(page.keyframe.shape, np.dtype(page.keyframe.dtype)) for page in self._pages]

    def __enter__(self) -> TiffBands:
        return self

    def __exit__(self, *exc_info) -> None:
        self._tif.close()

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of page ``index``: (stop - start, W) or (stop - start, W, S)."""
        page = self._pages[index]
        key, handle = page.keyframe, self._tif.filehandle
        width, samples = key.shaped[3], key.shaped[4]
        if key.is_final:  # uncompressed rows one after another: read just these
            stored = np.dtype(key.dtype).newbyteorder(self._tif.byteorder)
            handle.seek(page.dataoffsets[0] + start * width * samples * stored.itemsize)
            data = np.frombuffer(handle.read((stop - start) * width * samples * stored.itemsize), stored)
            return data.reshape(stop - start, *key.shape[1:]).astype(key.dtype, copy=False)
        band = np.empty((stop - start, width, samples), key.dtype)
        chunk_rows = key.tilelength if key.is_tiled else key.rowsperstrip
        across = key.chunked[1] if key.is_tiled else 1
        extras = {name: value for name, value in (("jpegtables", page.jpegtables), ("jpegheader", key.jpegheader))
                  if value is not None}
        for chunk_row in range(start // chunk_rows, math.ceil(stop / chunk_rows)):
            for column in range(across):
                index = chunk_row * across + column
                handle.seek(page.dataoffsets[index])
                segment, (_, _, top, left, _), _ = key.decode(handle.read(page.databytecounts[index]), index, **extras)
                rows = slice(max(start, top), min(stop, top + chunk_rows))
                columns = slice(left, min(width, left + key.chunks[1]))
                if segment is None:  # an empty chunk: the file's no-data value
                    band[rows.start - start : rows.stop - start, columns] = key.nodata
                    continue
                band[rows.start - start : rows.stop - start, columns] = segment[
                    0, rows.start - top : rows.stop - top, : columns.stop - left]
        return band if len(key.shape) == 3 else band[..., 0]


def _series_pages(series: tifffile.TiffPageSeries, max_chunk_bytes: int) -> list:
    """The pages of a series that ``read_pages`` splits it into, each readable in bands."""
    pages, plane = list(series.pages), _plane(series.shape, series.axes)
    if any(page is None for page in pages) or len(pages) * math.prod(plane) != math.prod(series.shape):
        raise NotInBands(f"series {series.index} is not stored as one page per image")
    for page in pages:
        key = page.keyframe
        if key.shaped[0] != 1 or key.shaped[1] != 1 or tuple(key.shape) != plane:
            raise NotInBands("its pages are stored by sample planes or in depth")
        rows = key.tilelength if key.is_tiled else key.rowsperstrip
        if not key.is_final and rows * key.shaped[3] * key.shaped[4] * np.dtype(key.dtype).itemsize > max_chunk_bytes:
            raise NotInBands(f"it is compressed in {'tiles' if key.is_tiled else 'strips'} of {rows} rows, too many "
                             "to decode at a time; write it tiled (tifffile.imwrite(..., tile=(256, 256)))")
    return pages
