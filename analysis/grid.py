"""The overlay comparison grid of the original study, as one RGB image.

One row per chosen test image: Original | Raw | Threshold (Otsu, when the study ran it) | one column per
fine-tuning size (ascending) | Ground truth. Each
prediction is drawn as its contour over the grey image (``cv2.findContours`` / ``cv2.drawContours``), the ground
truth as a contour of its own colour. Images come from the study parent's ``test_data/`` artifacts, predictions
from each child run's ``predictions/`` artifacts, both read through the MLflow client. The grid is written at full
resolution as PNG (``write_png``) and embedded in the report page as a lighter JPEG (``encode_jpeg``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from analysis.query import download
from segft.schema import (FINETUNE_ARM, RAW_ARM, TEST_DATA_DIR, THRESHOLD_ARM, prediction_path, study_image_path,
                          study_images_dir, study_mask_path)
from segft.overlays import draw_outline

PREDICTION_COLOUR = (255, 215, 0)  # yellow
TRUTH_COLOUR = (0, 230, 255)  # cyan
#: The most pixels of the grid shown in the page (see ``encode_jpeg``); the PNG beside it keeps them all.
INLINE_PIXELS = 2_000_000
JPEG_QUALITY = 85
BACKGROUND = 255
GAP = 4
HEADER_HEIGHT = 26
LABEL_WIDTH = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class GridRow:
    """One test image: its label, grey image (H, W) uint8, predicted masks (one per prediction column), truth,
    and optionally each prediction's Dice, written on its panel."""

    label: str
    image: np.ndarray
    predictions: tuple[np.ndarray, ...]
    truth: np.ndarray
    dice: tuple[float, ...] = ()


def contour_panel(grey: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> np.ndarray:
    """``grey`` (H, W) uint8 as RGB with the outline of ``mask`` (H, W, nonzero = foreground) drawn in ``colour``.

    Raises:
        ValueError: If the image and mask shapes differ or the image is not 2-D.
    """
    if grey.ndim != 2 or grey.shape != mask.shape:
        raise ValueError(f"need a 2-D image and a mask of the same shape, got {grey.shape} and {mask.shape}")
    return draw_outline(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), mask, colour, thickness)


def _text(text: str, width: int, height: int) -> np.ndarray:
    """A white (height, width, 3) strip with ``text`` centred in black, shrunk to fit."""
    strip = np.full((height, width, 3), BACKGROUND, np.uint8)
    (w1, h1), _ = cv2.getTextSize(text, FONT, 1.0, 1)
    scale = min(0.5, (width - 6) / max(w1, 1), (height - 8) / max(h1, 1))
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    cv2.putText(strip, text, ((width - w) // 2, (height + h) // 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in white on a black box in the panel's top-left corner."""
    (w1, _), _ = cv2.getTextSize(text, FONT, 1.0, 1)
    scale = min(0.4, (panel.shape[1] - 6) / max(w1, 1))
    (w, h), _ = cv2.getTextSize(text, FONT, scale, 1)
    panel[: h + 8, : w + 6] = 0
    cv2.putText(panel, text, (3, h + 4), FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return panel


def _pad(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.full((height, width, 3), BACKGROUND, np.uint8)
    out[: panel.shape[0], : panel.shape[1]] = panel
    return out


def _hstack(parts: list[np.ndarray]) -> np.ndarray:
    gap = np.full((parts[0].shape[0], GAP, 3), BACKGROUND, np.uint8)
    return np.concatenate([p for part in parts for p in (part, gap)][:-1], axis=1)


def compose_grid(rows: list[GridRow], headers: list[str]) -> np.ndarray:
    """Lay the rows out under the column headers, each row labelled on its left (text rotated).

    Args:
        rows: The test images; every row has ``len(headers) - 2`` predictions.
        headers: Column titles: original, one per prediction, ground truth.

    Returns:
        (H, W, 3) uint8 RGB. Panels are padded to the largest image; with panels of h × w and c columns,
        ``W = LABEL_WIDTH + c * w + (c - 1) * GAP`` and ``H = HEADER_HEIGHT + len(rows) * (h + GAP)``.

    Raises:
        ValueError: If there are no rows or a row's prediction count does not match the headers.
    """
    if not rows:
        raise ValueError("the grid needs at least one row")
    for row in rows:
        if len(row.predictions) != len(headers) - 2 or len(row.dice) not in (0, len(row.predictions)):
            raise ValueError(f"row {row.label!r} has {len(row.predictions)} predictions and {len(row.dice)} Dice "
                             f"values for {len(headers)} columns (original + predictions + ground truth)")
    height = max(r.image.shape[0] for r in rows)
    width = max(r.image.shape[1] for r in rows)
    lines = [np.concatenate([np.full((HEADER_HEIGHT, LABEL_WIDTH, 3), BACKGROUND, np.uint8),
                             _hstack([_text(h, width, HEADER_HEIGHT) for h in headers])], axis=1)]
    for row in rows:
        panels = [np.repeat(row.image.astype(np.uint8)[..., None], 3, axis=2)]
        predicted = [contour_panel(row.image, mask, PREDICTION_COLOUR) for mask in row.predictions]
        panels += [_caption(p, f"Dice {d:.2f}") for p, d in zip(predicted, row.dice)] + predicted[len(row.dice):]
        panels.append(contour_panel(row.image, row.truth, TRUTH_COLOUR))
        label = np.rot90(_text(row.label, height, LABEL_WIDTH)).copy()
        line = np.concatenate([label, _hstack([_pad(p, height, width) for p in panels])], axis=1)
        lines += [np.full((GAP, line.shape[1], 3), BACKGROUND, np.uint8), line]
    return np.concatenate(lines, axis=0)


def _read_mask(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


def _columns(tidy: pd.DataFrame, arm: str, repeat: int) -> list[tuple[str, str]]:
    """``(header, run_id)`` of the raw model, the threshold baseline (when the study ran it), then of ``arm`` at
    ``repeat`` for every size, ascending."""
    raws = tidy[tidy["arm"] == RAW_ARM]
    raw = raws.loc[raws["repeat"] == repeat, "run_id"].unique()  # with a base model per repeat: that repeat's
    if len(raw) == 0 and raws["repeat"].nunique() == 1:  # one base model for every repeat
        raw = raws["run_id"].unique()
    if len(raw) != 1:
        raise ValueError(f"the grid needs exactly one raw-model run for repeat {repeat}, found {len(raw)}")
    threshold = [("Threshold", run) for run in tidy.loc[tidy["arm"] == THRESHOLD_ARM, "run_id"].unique()[:1]]
    runs = tidy[(tidy["arm"] == arm) & (tidy["repeat"] == repeat)].drop_duplicates("n_images").sort_values("n_images")
    suffix = "" if arm == FINETUNE_ARM else f" ({arm})"
    sizes = [(f"{n} image{'s' * (n != 1)}{suffix}", run) for n, run in zip(runs["n_images"], runs["run_id"])]
    return [("Raw", raw[0]), *threshold, *sizes]


def load_grid(
    client: MlflowClient, parent_run_id: str, tidy: pd.DataFrame, grid_images: int = 2,
    images: dict[str, list[str]] | None = None, arm: str = FINETUNE_ARM, repeat: int = 0,
) -> tuple[list[str], list[GridRow]]:
    """Headers and rows of a study's grid, read through the client.

    Args:
        client: Client of the study's tracking store.
        parent_run_id: The study's parent run (holds ``test_data/<dataset>/{images,masks}/<name>.png``).
        tidy: The study's tidy table (which run is raw, which is ``arm`` at each size).
        grid_images: Test images per dataset when ``images`` is None: the first ones by name.
        images: ``{dataset: [image names]}`` to show instead.
        arm: The arm whose predictions fill the size columns.
        repeat: The repeat of that arm.

    Raises:
        ValueError: If ``grid_images`` < 1, the study lacks test data, a raw run or predictions.
    """
    if grid_images < 1:
        raise ValueError(f"grid_images must be >= 1, got {grid_images}")
    if images is None:
        datasets = sorted(Path(f.path).name for f in client.list_artifacts(parent_run_id, TEST_DATA_DIR) if f.is_dir)
        if not datasets:
            raise ValueError(f"study parent run {parent_run_id} has no test_data/ artifacts to draw the grid from")
        images = {d: sorted(Path(f.path).stem for f in client.list_artifacts(parent_run_id, study_images_dir(d)))
                  [:grid_images] for d in datasets}
    columns = _columns(tidy, arm, repeat)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:

        def get(run: str, path: str) -> np.ndarray:
            return _read_mask(download(client, run, path, Path(tmp) / run))

        for dataset, names in images.items():
            for name in names:
                scores = tidy[(tidy["dataset"] == dataset) & (tidy["image"] == name)].set_index("run_id")["dice"]
                rows.append(GridRow(
                    label=f"{dataset}/{name}",
                    image=get(parent_run_id, study_image_path(dataset, name)),
                    predictions=tuple(get(run, prediction_path(dataset, name)) for _, run in columns),
                    truth=get(parent_run_id, study_mask_path(dataset, name)),
                    dice=tuple(float(scores.get(run, np.nan)) for _, run in columns),
                ))
    return ["Original"] + [header for header, _ in columns] + ["Ground truth"], rows


def _check_rgb(grid: np.ndarray) -> None:
    if grid.ndim != 3 or grid.shape[2] != 3 or grid.dtype != np.uint8:
        raise ValueError(f"need an (H, W, 3) uint8 RGB array, got {grid.shape} {grid.dtype}")


def write_png(grid: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 grid as PNG.

    Raises:
        ValueError: If the array is not (H, W, 3) uint8 or cannot be written.
    """
    _check_rgb(grid)
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write {path}")
    return path


def encode_jpeg(grid: np.ndarray, max_pixels: int = INLINE_PIXELS, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 grid as JPEG bytes for the report page, shrunk to at most ``max_pixels`` pixels.

    The panels are noisy microscope images, which PNG barely compresses: the quickstart's grid (4 rows × 8 columns
    of 558 × 136 px, 2274 × 1138) is 5 MB as PNG, 0.5 MB here. Quality 85 leaves the images visually unchanged;
    chroma stays at full resolution (4:4:4) because the contours are 2 px coloured lines that 4:2:0 subsampling
    smears into the grey. The budget is an area, not a longer side, because the bytes grow with the area:
    2,000,000 pixels shrinks the quickstart's grid to 0.88 of its size (1001 px wide, 2000 high: about the 1100 px
    the page shows it at), while a tall grid of many rows keeps more of its width than a cap on its height would
    leave it.
    The image is shrunk with ``cv2.INTER_AREA`` and never enlarged. (Lossy WebP would be smaller, but it always
    subsamples chroma and refuses images over 16383 px.)

    Raises:
        ValueError: If the array is not (H, W, 3) uint8.
    """
    _check_rgb(grid)
    scale = min(1.0, (max_pixels / (grid.shape[0] * grid.shape[1])) ** 0.5)
    if scale < 1:
        size = (max(1, int(grid.shape[1] * scale)), max(1, int(grid.shape[0] * scale)))  # (W, H), floored
        grid = cv2.resize(grid, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [
        cv2.IMWRITE_JPEG_QUALITY, quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    if not ok:
        raise ValueError(f"cannot encode a {grid.shape} grid as JPEG")
    return jpeg.tobytes()
