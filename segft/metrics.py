"""Dice from true-positive, false-positive and false-negative counts (as smp's ``get_stats`` and nnU-Net), and the
per-dataset metrics a run logs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from segft import schema
from segft.quality import foreground_ratio


@dataclass(frozen=True)
class Counts:
    """Pixel counts of one prediction against its ground truth."""

    tp: int
    fp: int
    fn: int

    @property
    def dice(self) -> float:
        """``2 TP / (2 TP + FP + FN)``; 1.0 when both masks are empty (nothing to find, nothing found)."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 1.0 if denominator == 0 else 2 * self.tp / denominator


def confusion_counts(prediction: np.ndarray, truth: np.ndarray) -> Counts:
    """Counts of two boolean masks of the same shape.

    Raises:
        ValueError: If the shapes differ.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {truth.shape}")
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(prediction & truth))
    return Counts(tp=tp, fp=int(np.count_nonzero(prediction)) - tp, fn=int(np.count_nonzero(truth)) - tp)


def dataset_metrics(table: pd.DataFrame, part: str) -> dict[str, float]:
    """Per dataset of a per-image table (columns dataset, dice, tp, fp, fn): the mean per-image Dice (the study's
    per-dataset number) and the foreground ratio, predicted / true foreground pixels over the dataset's images
    (``segft.quality``), named ``<part>_dice_<dataset>`` and ``<part>_fg_ratio_<dataset>``."""
    metrics = {}
    for dataset, rows in table.groupby("dataset"):
        metrics[schema.metric_name(part, "dice", dataset)] = float(rows["dice"].mean())
        metrics[schema.metric_name(part, "fg_ratio", dataset)] = foreground_ratio(
            *(int(rows[c].sum()) for c in ("tp", "fp", "fn")))
    return metrics
