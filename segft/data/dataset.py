"""A dataset on disk: images with their masks, read, paired, checked and put in a fixed order.

Layouts accepted in a dataset folder:
    * ``images/`` and ``masks/`` subfolders whose files pair by stem (``images/07.tif`` with ``masks/07.png``).
      A file may be a stack: page i of the image pairs with page i of the mask and is named ``{stem}-p{i:03d}``
      (1-based); a single-page file is named ``{stem}``.
    * ``images.<suffix>`` and ``masks.<suffix>`` stacks (``images.tif`` + ``masks.tif``), paired page by page and
      named ``p001``, ``p002``, ...

Files whose name starts with '.' and files without an image suffix (``README.txt``) are ignored.

Order: natural sort of stems, case-insensitive, digit runs compared as numbers (``img2`` < ``img10`` < ``IMG11``).
This order is what "images 1-25" of a split refers to.

Every problem is raised as a ``DataError`` naming the file or folder, while loading and before any training.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from segft.data.imageset import ImageSet, StudyData
from segft.data.readers import IMAGE_SUFFIXES, DataError, image_files, read_images, read_masks

INVERTED_FRACTION = 0.5
"""A mask page with more foreground than this is reported as probably inverted."""

_LAYOUT_HINT = "a dataset folder holds images/ and masks/ subfolders, or images.tif and masks.tif stacks"


class InvertedMaskWarning(UserWarning):
    """A mask that is mostly foreground: probably stored with inverted polarity (True or 255 marking background)."""


def natural_key(stem: str) -> tuple:
    """Sort key for stems: case-insensitive, digit runs compared as numbers; ties broken by the exact stem."""
    parts = re.split(r"(\d+)", stem.lower())  # str, int, str, ... alternate, so keys always compare
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), stem


def _files_by_stem(paths: list[Path], where: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(paths):
        if path.stem in files:
            raise DataError(f"{where}: duplicate stem {path.stem!r} ({files[path.stem].name} and {path.name})")
        files[path.stem] = path
    return files


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; {_LAYOUT_HINT}")
    files = _files_by_stem(image_files(folder), folder)
    if not files:
        raise DataError(f"{folder}: holds no image file ({' '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _find_pairs(folder: Path) -> list[tuple[str | None, Path, Path]]:
    """(stem, image file, mask file) in natural order; stem is None for the images.tif + masks.tif layout."""
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    stacks = [path for path in image_files(folder) if path.stem in ("images", "masks")]
    if stacks and not (folder / "images").is_dir() and not (folder / "masks").is_dir():
        stacks_by_stem = _files_by_stem(stacks, folder)
        for kind in ("images", "masks"):
            if kind not in stacks_by_stem:
                raise DataError(f"{folder}: no {kind}.tif next to {stacks[0].name}; {_LAYOUT_HINT}")
        return [(None, stacks_by_stem["images"], stacks_by_stem["masks"])]
    images, masks = _image_files(folder / "images"), _image_files(folder / "masks")
    if images.keys() != masks.keys():
        no_mask = sorted(images.keys() - masks.keys(), key=natural_key)
        no_image = sorted(masks.keys() - images.keys(), key=natural_key)
        raise DataError(f"{folder}: unpaired files; images without a mask: {', '.join(no_mask) or 'none'}; "
                        f"masks without an image: {', '.join(no_image) or 'none'}")
    return [(stem, images[stem], masks[stem]) for stem in sorted(images, key=natural_key)]


def _page_names(stem: str | None, n_pages: int) -> list[str]:
    if stem is None:
        return [f"p{i:03d}" for i in range(1, n_pages + 1)]
    return [stem] if n_pages == 1 else [f"{stem}-p{i:03d}" for i in range(1, n_pages + 1)]


def _check_pair(image_path: Path, mask_path: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    if len(images) != len(masks):
        raise DataError(f"{image_path} has {len(images)} pages but its mask {mask_path} has {len(masks)}")
    for i, (image, mask) in enumerate(zip(images, masks), start=1):
        page = f" page {i}" if len(images) > 1 else ""
        if image.shape != mask.shape:
            raise DataError(f"image {image_path}{page} is {image.shape[0]}x{image.shape[1]} but mask {mask_path}"
                            f"{page} is {mask.shape[0]}x{mask.shape[1]}")
        if not mask.any():
            raise DataError(f"mask {mask_path}{page} has no foreground pixel")
    fractions = [float(mask.mean()) for mask in masks]
    flagged = [fraction for fraction in fractions if fraction > INVERTED_FRACTION]
    if flagged:
        over = f"{100 * INVERTED_FRACTION:.0f} %"
        pages = f" ({len(flagged)} of {len(masks)} pages over {over})" if len(masks) > 1 else ""
        warnings.warn(f"mask {mask_path} is {100 * max(flagged):.1f} % foreground{pages}: is it inverted? "
                      "segft treats values > 0 as foreground", InvertedMaskWarning, stacklevel=3)


def load_image_set(folder: str | Path, name: str) -> ImageSet:
    """Read, pair, check and sort one dataset folder (layouts and order: see the module docstring).

    Args:
        folder: The dataset folder. Nothing in it is modified.
        name: Name of the dataset, for example ``dataset1``.

    Returns:
        The images as read (native dtype, single channel) with bool masks; ``source`` is ``str(folder)``.

    Raises:
        DataError: Missing folder, no image file, duplicate stems, unpaired files, unreadable file, page count or
            size mismatch between an image and its mask, or a mask without foreground.

    Warns:
        InvertedMaskWarning: A mask page is more than 50 % foreground.
    """
    folder = Path(folder)
    names: list[str] = []
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for stem, image_path, mask_path in _find_pairs(folder):
        image_pages, mask_pages = read_images(image_path), read_masks(mask_path)
        _check_pair(image_path, mask_path, image_pages, mask_pages)
        names += _page_names(stem, len(image_pages))
        images += image_pages
        masks += mask_pages
    return ImageSet(name=name, names=tuple(names), images=tuple(images), masks=tuple(masks), source=str(folder))


def load_study_data(data_root: str | Path) -> StudyData:
    """Load ``data_root/dataset1`` (base training) and ``data_root/dataset2`` (the new domain).

    Raises:
        DataError: ``data_root`` or either dataset folder is missing (checked before reading any file), or any
            problem ``load_image_set`` reports.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; it should hold dataset1/ and dataset2/")
    for name in ("dataset1", "dataset2"):
        if not (root / name).is_dir():
            raise DataError(f"{root / name}: folder not found; a data folder holds dataset1/ and dataset2/")
    return StudyData(dataset1=load_image_set(root / "dataset1", "dataset1"),
                     dataset2=load_image_set(root / "dataset2", "dataset2"))


def require_images(image_set: ImageSet, needed: int, what: str) -> None:
    """Refuse a dataset with fewer images than a split or ``n_images`` needs.

    Args:
        image_set: The dataset.
        needed: How many images are needed.
        what: What needs them, for the message, e.g. ``"fine-tuning with n_images=15"``.

    Raises:
        DataError: For example "dataset2 has 12 images but fine-tuning with n_images=15 needs 15 (data/dataset2)".
    """
    if len(image_set) < needed:
        raise DataError(f"{image_set.name} has {len(image_set)} images but {what} needs {needed} ({image_set.source})")
