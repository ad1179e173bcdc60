"""``segft predict``: segment image files with a logged or registered model, writing one mask file per input.

Inputs are read by the same readers as training data (``segft.data.readers``: PNG, JPEG, TIFF stacks, 8/16-bit and
float, colour turned into one channel) and segmented by the model's pyfunc, so a file gets exactly the masks that
``mlflow.pyfunc.load_model(uri).predict(image)`` gives. Output names map back to the inputs:

* ``--format tif``: ``<stem>_mask.tif``, a multi-page TIFF for a stack (page i = mask of page i);
* ``--format png``: ``<stem>_mask.png``, or ``<stem>-p001_mask.png``... for the pages of a stack;
* ``--overlays true``: also ``<stem>_overlay.png`` (``<stem>-p001_overlay.png``...), the image with the predicted
  contour.

Masks are uint8, 0 = background and 255 = foreground (any viewer shows them; segft's readers read > 0 as
foreground). Inputs are never written: the output folder may not be the input folder, and a mask whose path is an
input's is refused. Existing masks of the same name in the output folder are replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm.auto import tqdm

from segft import tracking
from segft.config import PredictConfig
from segft.data.dataset import natural_key
from segft.data.readers import DataError, image_files, is_image_file, read_images
from segft.overlays import contour_overlay, mask_png

MASK_SUFFIX = "_mask"
OVERLAY_SUFFIX = "_overlay"


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` wrote for one input file: its masks file(s) and overlays (empty unless asked for)."""

    input: Path
    masks: tuple[Path, ...]
    overlays: tuple[Path, ...]


def list_inputs(path: str | Path) -> list[Path]:
    """The image files to segment: ``path`` itself, or the image files of folder ``path`` in natural order.

    Raises:
        DataError: If ``path`` is missing, is not an image file, is a folder without image files, or holds two
            files with the same stem (their masks would have the same name).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(image_files(path), key=lambda p: (natural_key(p.stem), p.name))
        if not files:
            raise DataError(f"{path}: holds no image file (PNG, JPEG or TIFF)")
        stems: dict[str, Path] = {}
        for file in files:
            if file.stem in stems:
                raise DataError(f"{path}: {stems[file.stem].name} and {file.name} would write masks of the same name")
            stems[file.stem] = file
        return files
    if not path.exists():
        raise DataError(f"{path}: {'a broken symbolic link' if path.is_symlink() else 'no such file or folder'}")
    if not is_image_file(path):
        raise DataError(f"{path}: not an image file (PNG, JPEG or TIFF)")
    return [path]


def page_stems(stem: str, n_pages: int) -> list[str]:
    """Per-page names of a file: the stem for a single image, ``<stem>-p001``... for the pages of a stack."""
    return [stem] if n_pages == 1 else [f"{stem}-p{i:03d}" for i in range(1, n_pages + 1)]


def predict(config: PredictConfig) -> list[Prediction]:
    """Segment every input of ``config`` and write its masks (and overlays) into ``config.output``.

    Raises:
        ValueError: If input or output is missing, the output is the input folder or a file, or the model cannot
            be loaded or is not a segft model (``segft.checkpoint.CheckpointError`` for a tampered checkpoint).
        DataError: For unreadable inputs (see ``list_inputs`` and ``segft.data.readers``).
    """
    if not config.input or not config.output:
        raise ValueError("predict needs --input (an image file, TIFF stack or folder) and --output (a folder)")
    inputs = list_inputs(config.input)
    output = Path(config.output)
    protected = {path.resolve() for path in inputs}
    if Path(config.input).is_dir() and output.resolve() == Path(config.input).resolve():
        raise ValueError(f"{output}: the output folder is the input folder; choose another one (inputs are never "
                         "written, and masks there would be read as inputs next time)")
    if output.exists() and not output.is_dir():
        what = "the input file" if output.resolve() in protected else "a file"
        raise ValueError(f"{output}: --output is {what}, not a folder; give a folder for the masks")
    model = tracking.load_model(config.model, {"device": config.device, "autocast": config.autocast})
    params = {"overlap": config.overlap, "threshold": config.threshold, "batch_size": config.batch_size}
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with tqdm(total=len(inputs), desc="predict", unit="image") as progress:
        for path in inputs:
            images = read_images(path)
            progress.total += len(images) - 1  # a stack counts its pages
            masks = []
            for image in images:
                masks.append(model.predict(image, params=params))
                progress.update()
            written.append(_write(path, images, masks, output, config, protected))
    return written


def _write(path: Path, images: list[np.ndarray], masks: list[np.ndarray], output: Path, config: PredictConfig,
           protected: set[Path]) -> Prediction:
    stems = page_stems(path.stem, len(images))
    if config.format == "tif":
        mask_files = [output / f"{path.stem}{MASK_SUFFIX}.tif"]
        _refuse_inputs(mask_files, protected)
        stack = np.stack([mask_png(mask) for mask in masks])
        # minisblack: a stack of 3 or 4 masks must not be stored (and read back) as one colour image
        tifffile.imwrite(mask_files[0], stack if len(masks) > 1 else stack[0], photometric="minisblack",
                         compression="zlib")
    else:
        mask_files = [output / f"{stem}{MASK_SUFFIX}.png" for stem in stems]
        _refuse_inputs(mask_files, protected)
        for file, mask in zip(mask_files, masks):
            _write_png(file, mask_png(mask))
    overlay_files = []
    if config.overlays:
        overlay_files = [output / f"{stem}{OVERLAY_SUFFIX}.png" for stem in stems]
        _refuse_inputs(overlay_files, protected)
        for file, image, mask in zip(overlay_files, images, masks):
            _write_png(file, cv2.cvtColor(contour_overlay(image, mask), cv2.COLOR_RGB2BGR))
    return Prediction(path, tuple(mask_files), tuple(overlay_files))


def _refuse_inputs(files: list[Path], protected: set[Path]) -> None:
    for file in files:
        if file.resolve() in protected:
            raise ValueError(f"{file}: is an input; refusing to overwrite it")


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"{path}: cannot encode the PNG")
    encoded.tofile(path)  # not cv2.imwrite: it cannot write non-ASCII paths on Windows
