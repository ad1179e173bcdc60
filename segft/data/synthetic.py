"""Built-in synthetic data: a deterministic stand-in for the study's two microtube datasets.

Each image (558 x 136 px, H x W, uint8) shows one elongated cell inside a vertical microtube, as in the study's
microscope images. The shapes follow the statistics of the real cell masks: the cell fills the tube's width
(median row width 49-55 px), is 200-350 px long with ragged, spiky ends, sits anywhere vertically but never touches
the image border, covers 12.5-20.5 % of the frame and is one connected region. The tube has two walls running the
full height, 2-10 px outside the cell on each side, with a slight tilt shared by cell and tube.

The two datasets share this shape generator (with different random draws) and differ in intensity, the domain
shift that fine-tuning must fix:

* Dataset 1, fluorescence-like: dark background (about 20), bright textured cell with a faint glow (about 160),
  faint bright walls, slight blur, Poisson shot noise plus Gaussian read noise.
* Dataset 2, brightfield-like: grey background (100-140) under strongly uneven illumination, dark thick walls,
  a faint textured cell (10-35 above the background, varying per image) with a bright rim, dark round debris
  outside the tube, stronger blur and noise. The cell stays brighter than its surroundings, so the two datasets
  do not contradict each other (a model can segment both), but after per-image normalization the background is
  mid-grey and uneven instead of dark.

Every image draws from its own generator seeded with (seed, dataset, image index), so an image does not depend on
how many images were asked for, and the same seed gives byte-identical arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from segft.data.imageset import ImageSet, StudyData

HEIGHT, WIDTH = 558, 136
VERSION = "microtube-v2"
_FRACTION_RANGE = (0.125, 0.205)


def make_microtube_study(seed: int = 0, n_images: int = 31) -> StudyData:
    """Both synthetic datasets: Dataset 1 (fluorescence-like) and Dataset 2 (brightfield-like).

    Args:
        seed: Non-negative seed; the same seed gives identical data.
        n_images: Images per dataset, named ``001``, ``002``...

    Returns:
        A ``StudyData`` of two ``ImageSet`` with uint8 images and bool masks of shape (558, 136).

    Raises:
        ValueError: If ``seed`` is negative or ``n_images`` is smaller than 1.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    return StudyData(*(_make_set(seed, dataset, n_images) for dataset in (1, 2)))


def _make_set(seed: int, dataset: int, n_images: int) -> ImageSet:
    """Dataset 1 or 2: same shape generator, the dataset's own renderer, one generator per image."""
    render = _render_fluorescence if dataset == 1 else _render_brightfield
    names, images, masks = [], [], []
    for index in range(n_images):
        rng = np.random.default_rng([seed, dataset, index])
        mask, tube = _cell_and_tube(rng)
        names.append(f"{index + 1:03d}")
        images.append(render(rng, mask, tube))
        masks.append(mask)
    source = f"synthetic:{VERSION}:seed={seed}"
    return ImageSet(f"dataset{dataset}", tuple(names), tuple(images), tuple(masks), source)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field whose features are about ``scale`` pixels wide."""
    small = rng.standard_normal((int(shape[0] / scale) + 2, int(shape[1] / scale) + 2)).astype(np.float32)
    field = cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _ragged_end(rng: np.random.Generator, width: int) -> np.ndarray:
    """How far each column of a cell end sticks out (positive) or is notched in (negative), in pixels."""
    profile = rng.uniform(1.0, 4.0) * _smooth_noise(rng, (1, width), rng.uniform(6, 15))[0]
    columns = np.arange(width)
    for _ in range(rng.integers(0, 3)):  # notches, later partly overgrown by spikes
        centre, half, depth = rng.uniform(0, width), rng.uniform(2.0, 8.0), rng.uniform(3.0, 12.0)
        profile = np.minimum(profile, -depth * (1 - np.abs(columns - centre) / half))
    for _ in range(rng.integers(1, 6)):  # thin spikes and the odd wide, neck-like protrusion
        centre, half, height = rng.uniform(0, width), rng.uniform(0.8, 8.0), rng.uniform(3.0, 25.0)
        profile = np.maximum(profile, height * (1 - np.abs(columns - centre) / half))
    return profile


class _Tube(NamedTuple):
    """A straight, slightly tilted vertical tube: axis column at the middle row, tilt, inner half-width, wall sigma."""

    centre: float
    slope: float
    half: float
    thickness: float

    def wall_distance(self, shift: float = 0.0) -> np.ndarray:
        """Horizontal distance (H x W) of every pixel to the nearer wall, walls moved outwards by ``shift``."""
        return np.abs(np.abs(_axis_offset(self.centre, self.slope)) - self.half - shift)


def _axis_offset(centre: float, slope: float) -> np.ndarray:
    """Signed horizontal distance (H x W) of every pixel to the line through (H / 2, centre) of tilt ``slope``."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    return xs - (centre + slope * (ys - HEIGHT / 2))


def _cell_and_tube(rng: np.random.Generator) -> tuple[np.ndarray, _Tube]:
    """One cell mask (bool, H x W) and the tube around it, sharing its tilt."""
    rows = np.arange(HEIGHT, dtype=np.float32)[:, None]
    slope = rng.uniform(-0.015, 0.015)
    for _ in range(100):  # redraw until the foreground fraction is in range; a few draws suffice
        width, length = int(rng.integers(49, 55)), rng.uniform(200, 295)
        top, centre = rng.uniform(40, HEIGHT - 40 - length), rng.uniform(58, 72)
        column = np.floor(_axis_offset(centre, slope) + width / 2).astype(int)  # column across the cell
        ends = np.clip(column, 0, width - 1)
        mask = (column >= 0) & (column < width)
        mask &= (rows >= top - _ragged_end(rng, width)[ends]) & (rows <= top + length + _ragged_end(rng, width)[ends])
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
        mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # keep one piece
        if _FRACTION_RANGE[0] <= mask.mean() <= _FRACTION_RANGE[1]:
            tube = _Tube(centre + rng.uniform(-2, 2), slope, width / 2 + rng.uniform(4, 8), rng.uniform(1.2, 2.0))
            return mask, tube
    raise RuntimeError("could not draw a cell with the required foreground fraction")


def _line(distance: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian ridge of height 1 along the pixels where ``distance`` is 0."""
    return np.exp(-0.5 * (distance / sigma) ** 2)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigma)


def _render_fluorescence(rng: np.random.Generator, mask: np.ndarray, tube: _Tube) -> np.ndarray:
    """Dark background, bright textured cell with glow, faint walls, blur, shot and read noise."""
    cell = _blur(mask.astype(np.float32), 1.0)
    texture = 1 + 0.18 * _smooth_noise(rng, mask.shape, 12) + 0.10 * _smooth_noise(rng, mask.shape, 4)
    level = rng.uniform(100, 170)
    image = rng.uniform(12, 28) * (1 + 0.1 * _smooth_noise(rng, mask.shape, 150))
    image = image + rng.uniform(8, 22) * _line(tube.wall_distance(), tube.thickness)
    image = image + level * (cell * texture + 0.12 * _blur(mask.astype(np.float32), 10))
    gain = rng.uniform(1.0, 3.0)
    image = rng.poisson(np.clip(_blur(image, 0.8), 0, None) / gain) * gain
    image = image + rng.normal(0, rng.uniform(1.5, 3.5), mask.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render_brightfield(rng: np.random.Generator, mask: np.ndarray, tube: _Tube) -> np.ndarray:
    """Grey background under strongly uneven light, dark thick walls, a faint textured cell with a bright rim,
    dark debris outside the tube, stronger blur and noise.

    The cell stays a little brighter than its surroundings, so nothing here contradicts Dataset 1 (a model can
    learn both), but once each image is normalized the background is no longer dark: it is mid-grey and uneven,
    and the cell stands out only by a faint, varying contrast, its texture and its rim. A model trained on
    Dataset 1 alone takes bright background for cell and misses faint cells.
    """
    cell = _blur(mask.astype(np.float32), 1.2)
    core = _blur(cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(np.float32), 2.0)
    rim = np.clip(cell - core, 0, 1)
    texture = 1 + 0.35 * _smooth_noise(rng, mask.shape, 8) + 0.2 * _smooth_noise(rng, mask.shape, 3)
    ys, xs = np.linspace(-1, 1, HEIGHT)[:, None], np.linspace(-1, 1, WIDTH)[None, :]
    light = 1 + rng.uniform(-0.25, 0.25) * ys + rng.uniform(-0.2, 0.2) * xs + 0.1 * _smooth_noise(rng, mask.shape, 90)
    walls = rng.uniform(40, 70) * _line(tube.wall_distance(), tube.thickness * rng.uniform(1.5, 2.5))
    debris = np.zeros(mask.shape, np.float32)
    rows, cols = np.nonzero(np.abs(_axis_offset(tube.centre, tube.slope)) > tube.half + 12)
    for k in rng.integers(len(rows), size=int(rng.integers(1, 5))):
        cv2.circle(debris, (int(cols[k]), int(rows[k])), int(rng.integers(4, 10)), 1.0, -1)
    image = rng.uniform(100, 140) - walls - rng.uniform(30, 60) * _blur(debris, 1.5)
    image = image + rng.uniform(10, 35) * cell * texture + rng.uniform(15, 35) * rim
    image = _blur(image * light, rng.uniform(0.6, 1.4)) + rng.normal(0, rng.uniform(5.0, 9.0), mask.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_image_set(image_set: ImageSet, out_dir: str | Path) -> Path:
    """Write ``out_dir/images/<name>.png`` and ``out_dir/masks/<name>.png`` (masks as uint8 0/255).

    Args:
        image_set: Images (uint8 or uint16) with their masks.
        out_dir: Folder to create; it may exist only if empty.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: If ``out_dir`` exists and is not empty, or an image is not uint8 or uint16.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"refusing to overwrite non-empty folder {out_dir}")
    for name, image in zip(image_set.names, image_set.images):
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"image {name!r} has dtype {image.dtype}; PNG needs uint8 or uint16")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    for name, image, mask in zip(image_set.names, image_set.images, image_set.masks):
        if not cv2.imwrite(str(out_dir / "images" / f"{name}.png"), image):
            raise ValueError(f"could not write image {name!r} to {out_dir}")
        cv2.imwrite(str(out_dir / "masks" / f"{name}.png"), mask.astype(np.uint8) * 255)
    return out_dir


def write_study(study: StudyData, out_dir: str | Path) -> Path:
    """Write ``out_dir/dataset1``, ``out_dir/dataset2`` (see ``write_image_set``) and a ``README.txt``.

    Raises:
        ValueError: If ``out_dir`` exists and is not empty.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"refusing to overwrite non-empty folder {out_dir}")
    for image_set in (study.dataset1, study.dataset2):
        write_image_set(image_set, out_dir / image_set.name)
    height, width = study.dataset1.images[0].shape
    (out_dir / "README.txt").write_text(
        f"Synthetic microtube study ({study.dataset1.source}), written by segft.data.synthetic.\n"
        f"dataset1: {len(study.dataset1)} fluorescence-like images (bright cell, dark background).\n"
        f"dataset2: {len(study.dataset2)} brightfield-like images (faint cell with bright rim, dark walls and debris, grey background).\n"
        f"Each folder holds images/<name>.png (8-bit grey, {height} x {width} px) and masks/<name>.png "
        f"(0 = background, 255 = cell), paired by name.\nContent digest: {study.digest()}\n"
    )
    return out_dir
