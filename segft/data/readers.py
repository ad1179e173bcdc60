"""Reading image and mask files (PNG, JPEG, TIFF) into 2-D arrays, one per page, by one rule for every format."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import tifffile

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
    with tifffile.TiffFile(path) as tif:
        for series in tif.series:
            data, axes = series.asarray(), series.axes
            if "S" in axes:  # samples (colour channels) go last, whether stored interleaved or planar
                data = np.moveaxis(data, axes.index("S"), -1)
            plane = data.shape[-3:] if "S" in axes else data.shape[-2:]
            pages.extend(data.reshape(-1, *plane))
    return pages


def _read_opencv(path: Path) -> list[np.ndarray]:
    # imdecode over np.fromfile, not imread: imread cannot open non-ASCII paths on Windows.
    page = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if page is None:
        raise ValueError("OpenCV cannot decode it")
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


def to_single_channel(page: np.ndarray, path: str | Path) -> np.ndarray:
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

    Returns:
        An (H, W) array.

    Raises:
        DataError: Unsupported dtype or shape, or non-finite pixels (the message counts them).
    """
    page = _without_alpha(_supported_dtype(page, path), path)
    if page.ndim == 3 and page.shape[2] == 1:
        page = page[..., 0]
    elif page.ndim == 3:
        grey = np.array_equal(page[..., 0], page[..., 1]) and np.array_equal(page[..., 1], page[..., 2])
        page = page[..., 0] if grey else page.astype(np.float32) @ _BT601
    if page.dtype.kind == "f" and not np.isfinite(page).all():
        bad = page.size - int(np.isfinite(page).sum())
        raise DataError(f"{path}: {bad} of {page.size} pixels are NaN or infinite; replace them (e.g. by the image's "
                        "background value) before segmenting or training")
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
