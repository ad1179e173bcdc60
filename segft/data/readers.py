"""Reading image and mask files (PNG, JPEG, TIFF) into 2-D arrays, one per page, by one rule for every format."""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import tifffile

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: What a decoder says about a file it still decoded that makes the image unusable (libjpeg fills the rest of a
#: damaged JPEG with grey and only says so on stderr).
_DAMAGE = re.compile(r"corrupt|premature end", re.IGNORECASE)
#: The prefix of OpenCV's own log lines (``[ WARN:0@0.04] global grfmt_png.cpp:793 readFromStreamOrBuffer``).
_OPENCV_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*(global\s+\S+\s+\S+\s+)?")


class DataError(ValueError):
    """Input data segft cannot use; the one-line message names the file (or folder) and the problem."""


def is_image_file(path: Path) -> bool:
    """True for a visible file (name not starting with '.') whose suffix, in any case, is in ``IMAGE_SUFFIXES``."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` (in no particular order), by ``is_image_file``'s rule.

    Raises:
        DataError: For an entry named like an image (``017.png``) that is a folder, a broken symbolic link or
            another non-file: it is neither used nor silently skipped.
    """
    files = []
    for path in Path(folder).iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            kind = ("a folder" if path.is_dir() else "a broken symbolic link" if path.is_symlink()
                    else "not a regular file")
            raise DataError(f"{path}: named like an image but is {kind}; rename or remove it")
        files.append(path)
    return files


def read_pages(path: str | Path) -> list[np.ndarray]:
    """Every image stored in a file, as stored: (H, W) or (H, W, C) with colour channels in RGB(A) order.

    TIFF (tifffile): every series is split into its pages along all axes but Y, X and the samples axis S, so a
    stack written as (N, H, W) gives N pages of (H, W) and an RGB(A) image gives one (H, W, 3|4) page. Note that
    ``tifffile.imwrite`` stores an (N, H, W) array with N in {3, 4} as one colour image unless told
    ``photometric="minisblack"``; the file's own metadata decides.
    PNG / JPEG (OpenCV, ``IMREAD_UNCHANGED``): one page; OpenCV's BGR(A) order is turned into RGB(A).

    A damaged file is refused, never read in part, and the libraries' own complaints become the reason in segft's
    one line instead of lines of their own on stderr: what libpng, libjpeg and OpenCV print while decoding (a JPEG
    they still decoded is refused when they call it corrupt), and what tifffile logs while reading (it logs when it
    had to guess: a page list cut short, a stack it could not shape, which it would otherwise return in part).

    Raises:
        DataError: The file is missing, its suffix is not in ``IMAGE_SUFFIXES``, or it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        expected = " ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{path}: unknown image suffix {path.suffix!r}; expected one of {expected}")
    try:
        pages = _read_tiff(path) if path.suffix.lower() in _TIFF_SUFFIXES else _read_opencv(path)
    except Exception as exc:  # each library raises its own types for a corrupt file; all mean "unreadable"
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable or corrupt image file ({reason})") from exc
    if not pages:
        raise DataError(f"{path}: the file holds no image")
    return pages


def _read_tiff(path: Path) -> list[np.ndarray]:
    pages = []
    with tifffile_log() as messages, tifffile.TiffFile(path) as tif:
        for series in tif.series:
            data, axes = series.asarray(), series.axes
            if "S" in axes:  # samples (colour channels) go last, whether stored interleaved or planar
                data = np.moveaxis(data, axes.index("S"), -1)
            plane = data.shape[-3:] if "S" in axes else data.shape[-2:]
            pages.extend(data.reshape(-1, *plane))
    if messages:
        raise ValueError(f"tifffile: {messages[0]}")
    return pages


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # tifffile starts its messages with the object's repr (``<tifffile.TiffPages @8> invalid page offset``)
        self.messages.append(re.sub(r"^<[^>]*>\s*", "", " ".join(record.getMessage().split())))


@contextmanager
def tifffile_log() -> Iterator[list[str]]:
    """The warnings tifffile logs meanwhile, collected instead of printed (Python's last-resort handler would
    write them to stderr). Not thread-safe: the ``tifffile`` logger is changed for the duration."""
    logger, collector = logging.getLogger("tifffile"), _Collector()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """The lines native code (libpng, libjpeg, OpenCV's log) writes to stderr (file descriptor 2) meanwhile,
    collected instead of printed. Not thread-safe: another thread's stderr output meanwhile is collected too."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect (a detached process): nothing to keep from it
        saved = None
    if saved is None:
        yield lines
        return
    try:
        with tempfile.TemporaryFile() as sink:
            sys.stderr.flush()
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read().decode(errors="replace")
                lines.extend(_OPENCV_LOG_PREFIX.sub("", line.strip()) for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)


def _read_opencv(path: Path) -> list[np.ndarray]:
    # imdecode over np.fromfile, not imread: imread cannot open non-ASCII paths on Windows.
    encoded = np.fromfile(path, dtype=np.uint8)
    with _native_stderr() as complaints:
        page = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    damage = [line for line in complaints if _DAMAGE.search(line)]
    if page is None or damage:
        raise ValueError((damage or complaints or ["OpenCV cannot decode it"])[0])
    if page.ndim == 3 and page.shape[2] in (3, 4):
        page = cv2.cvtColor(page, cv2.COLOR_BGR2RGB if page.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return [page]


def _supported_dtype(page: np.ndarray, path: str | Path) -> np.ndarray:
    """bool → uint8, float64 → float32; integer types and float32 kept; anything else is refused."""
    if page.dtype == np.bool_:
        return page.astype(np.uint8)
    if page.dtype == np.float64:
        return page.astype(np.float32)
    if page.dtype.kind in "ui" or page.dtype == np.float32:
        return page
    raise DataError(f"{path}: unsupported pixel type {page.dtype}; expected bool, integers, float32 or float64")


def _without_alpha(page: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) kept; (H, W, C) without its alpha: C=1 grey, 2 grey + alpha, 3 RGB, 4 RGBA."""
    if page.ndim == 2:
        return page
    if page.ndim == 3 and page.shape[2] in (1, 2, 3, 4):
        return page[..., : 1 if page.shape[2] < 3 else 3]
    raise DataError(f"{path}: unsupported image shape {page.shape}; expected (H, W) or (H, W, C) with C in 1-4")


def supported_page(page: np.ndarray, path: str | Path) -> np.ndarray:
    """A page with ``to_single_channel``'s pixel type and alpha rules applied, still (H, W) or (H, W, C).

    Raises:
        DataError: Unsupported dtype or shape.
    """
    return _without_alpha(_supported_dtype(page, path), path)


def is_grey_colour(page: np.ndarray) -> bool:
    """True for a colour page (H, W, 3|4) whose three colour channels are equal: grey stored as colour."""
    return (page.ndim == 3 and page.shape[2] >= 3 and np.array_equal(page[..., 0], page[..., 1])
            and np.array_equal(page[..., 1], page[..., 2]))


def non_finite_pixels(image: np.ndarray) -> int:
    """How many pixels of a 2-D image are NaN or infinite (0 for integer images)."""
    return image.size - int(np.isfinite(image).sum()) if image.dtype.kind == "f" else 0


def non_finite_error(path: str | Path, bad: int, size: int) -> DataError:
    """The error for an image ``bad`` of whose ``size`` pixels are NaN or infinite."""
    return DataError(f"{path}: {bad} of {size} pixels are NaN or infinite; replace them (e.g. by the image's "
                     "background value) before segmenting or training")


def to_single_channel(page: np.ndarray, path: str | Path, grey: bool | None = None,
                      check_finite: bool = True) -> np.ndarray:
    """One 2-D image from a page, by the same rule for every format.

    Rule:
        * dtype: bool → uint8 (0/1); float64 → float32; integer types and float32 kept; others refused.
        * (H, W) kept; (H, W, 1) squeezed; an alpha channel (grey + alpha, RGBA) is ignored.
        * RGB whose three channels are equal (grey stored as colour): that channel, dtype unchanged.
        * Other RGB: luminance 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601), computed in and returned as float32.
        * NaN or infinite pixels are refused: no normalization, loss or prediction is defined on them.

    Args:
        page: One page from ``read_pages``: (H, W) or (H, W, C), channels in RGB(A) order.
        path: The file it came from, named in error messages.
        grey: Whether a colour page is grey stored as colour; None decides from the page itself
            (``is_grey_colour``). A page read in strips passes the decision taken over the whole page, so that every
            strip follows the same rule.
        check_finite: Refuse non-finite pixels; a caller reading a page in strips counts them itself
            (``non_finite_pixels``) to name the whole page's count.

    Returns:
        An (H, W) array.

    Raises:
        DataError: Unsupported dtype or shape, or non-finite pixels (the message counts them).
    """
    page = supported_page(page, path)
    if page.ndim == 3 and page.shape[2] == 1:
        page = page[..., 0]
    elif page.ndim == 3:
        grey = is_grey_colour(page) if grey is None else grey
        page = page[..., 0] if grey else page.astype(np.float32) @ _BT601
    bad = non_finite_pixels(page) if check_finite else 0
    if bad:
        raise non_finite_error(path, bad, page.size)
    return np.ascontiguousarray(page)


def read_images(path: str | Path) -> list[np.ndarray]:
    """Every page of an image file as an (H, W) array, by the rule of ``to_single_channel``."""
    return [to_single_channel(page, path) for page in read_pages(path)]


def read_masks(path: str | Path) -> list[np.ndarray]:
    """Every page of a mask file as an (H, W) bool array.

    Rule: a pixel is foreground when its value is > 0, so 0/1, 0/255, bool and instance labels (uint16) all work;
    in a colour mask when any colour channel is > 0; alpha is ignored. Polarity is never guessed.

    Raises:
        DataError: Unreadable file, unsupported dtype or shape.
    """
    masks = []
    for page in read_pages(path):
        foreground = _without_alpha(_supported_dtype(page, path), path) > 0
        masks.append(foreground.any(axis=2) if foreground.ndim == 3 else foreground)
    return masks
