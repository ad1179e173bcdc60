"""``segft predict``: segment image files with a logged or registered model, writing one mask file per input.

Loading a model runs no code from the store: the model's checkpoint (``model.json`` + weights read with
``weights_only``) is downloaded and the network rebuilt by the installed segft (``segft.pyfunc.SegmentationModel``),
never importing the Python files logged with the model. Inputs are read by the same readers as training data
(``segft.data.readers``: PNG, JPEG, TIFF stacks, 8/16-bit and float, colour turned into one channel) and segmented
by the code the pyfunc serves, so a file gets exactly the masks that
``mlflow.pyfunc.load_model(uri).predict(image)`` gives. Output names map back to the inputs:

* ``--format tif``: ``<stem>_mask.tif``, a multi-page TIFF for a stack (page i = mask of page i);
* ``--format png``: ``<stem>_mask.png``, or ``<stem>-p001_mask.png``... for the pages of a stack;
* ``--overlays true``: also ``<stem>_overlay.png`` (``<stem>-p001_overlay.png``...), the image with the predicted
  contour.

Masks are uint8, 0 = background and 255 = foreground (any viewer shows them; segft's readers read > 0 as
foreground). Inputs are never written: the output folder may not be the input folder, and a mask whose path is an
input's is refused. Existing masks of the same name in the output folder are replaced.

Memory is bounded by ``--memory-budget-mb``, not by the image: a file that would need more to segment whole
(``segft.strips.BYTES_PER_PIXEL`` per pixel of its largest page, plus the file's pixels as stored) is, if a TIFF,
read, segmented and written strip by strip (``segft.strips``: the same windows and blending; normalization
statistics from a subsample above 2048 x 2048 pixels) into a tiled ``<stem>_mask.tif``. What cannot be streamed
— a PNG or JPEG, a TIFF stored in tall compressed strips, ``--format png``, ``--overlays`` — is refused for such a
file before the model loads. Every check of inputs, settings and ``--output`` comes before the model loads.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from tqdm.auto import tqdm

from segft import tracking
from segft.config import PredictConfig
from segft.data.bands import NotInBands, TiffBands, page_shapes
from segft.data.dataset import natural_key
from segft.data.readers import DataError, image_files, is_image_file, read_images, tifffile_log
from segft.overlays import contour_overlay, mask_png
from segft.pyfunc import SegmentationModel
from segft.strips import BYTES_PER_PIXEL, segment_tiff

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


def in_strips(path: Path, config: PredictConfig) -> bool:
    """Whether ``path`` is segmented strip by strip (a TIFF needing more than the memory budget whole), from its
    header; a file whose header cannot be read is segmented whole (reading it then says what is wrong).

    Raises:
        DataError: For a file over the budget that cannot be streamed: a PNG or JPEG, a TIFF not readable in
            bands, or any file with ``--format png`` or ``--overlays``.
    """
    pages, budget = page_shapes(path), config.memory_budget_mb * 2**20
    if not pages:
        return False
    needed = sum(page.nbytes for page in pages) + BYTES_PER_PIXEL * max(page.pixels for page in pages)
    if needed <= budget:
        return False
    height, width = pages[0].shape[:2]
    over = (f"{path}: a {width} x {height} image needs about {needed / 2**20:,.0f} MB to segment whole, over "
            f"--memory-budget-mb {config.memory_budget_mb}")
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DataError(f"{over}, and only TIFF files are read in strips; convert it to TIFF or raise the budget")
    if config.format != "tif" or config.overlays:
        raise DataError(f"{over}, and --format png and --overlays cannot be written in strips; use --format tif "
                        "without --overlays, or raise the budget")
    try:
        with tifffile_log(), TiffBands(path, budget // 4):  # a damaged file's warnings: reading it will say
            return True
    except NotInBands as error:
        raise DataError(f"{over}, and it cannot be read in strips: {error}") from error


def predict(config: PredictConfig) -> list[Prediction]:
    """Segment every input of ``config`` and write its masks (and overlays) into ``config.output``.

    Raises:
        ValueError: If input or output is missing, the output is the input folder or a file or cannot be created,
            or the model cannot be loaded or is not a segft model (``segft.checkpoint.CheckpointError`` for a
            tampered checkpoint).
        DataError: For unreadable inputs (see ``list_inputs`` and ``segft.data.readers``) and for files over the
            memory budget that cannot be streamed (``in_strips``).
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
    streamed = {path for path in inputs if in_strips(path, config)}
    _make_output_folder(output)
    model = load_model(config)
    params = {"overlap": config.overlap, "threshold": config.threshold, "batch_size": config.batch_size}
    written = []
    with tqdm(total=len(inputs), desc="predict", unit="image") as progress:
        for path in inputs:
            if path in streamed:
                written.append(_predict_in_strips(path, model, params, output, config, protected, progress))
                continue
            images = read_images(path)
            progress.total += len(images) - 1  # a stack counts its pages
            masks = []
            for image in images:
                masks.append(model.predict(image, params=params))
                progress.update()
            written.append(_write(path, images, masks, output, config, protected))
    return written


def load_model(config: PredictConfig) -> SegmentationModel:
    """The model of ``config.model`` on ``config.device``, rebuilt from its downloaded checkpoint alone: none of
    the code logged with it is imported (``segft.tracking.download_checkpoint``).

    Raises:
        ValueError: If the model cannot be downloaded or is not a segft model, or for an unknown device.
        segft.checkpoint.CheckpointError: If its checkpoint is missing or was tampered with.
    """
    with tempfile.TemporaryDirectory(prefix="segft-model-") as folder:
        checkpoint = tracking.download_checkpoint(config.model, Path(folder))
        return SegmentationModel(checkpoint, config.device, config.autocast)


def _make_output_folder(output: Path) -> None:
    """Create ``output`` and check that files can be written in it, before the model loads."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as error:
        raise ValueError(f"{output}: --output cannot be created or written ({error.strerror or error}); give a "
                         "folder you can write to") from error


def _predict_in_strips(path: Path, model: SegmentationModel, params: dict[str, float], output: Path,
                       config: PredictConfig, protected: set[Path], progress: tqdm) -> Prediction:
    mask_file = output / f"{path.stem}{MASK_SUFFIX}.tif"
    _refuse_inputs([mask_file], protected)
    partial = output / f".{mask_file.name}.partial"  # hidden: never read as an image, replaced when complete
    progress.total += len(page_shapes(path) or [path]) - 1  # a stack counts its pages
    try:
        segment_tiff(path, model.segmenter(params), partial, config.memory_budget_mb * 2**20, progress.update)
        os.replace(partial, mask_file)
    finally:
        partial.unlink(missing_ok=True)
    return Prediction(path, (mask_file,), ())


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
