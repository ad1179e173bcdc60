"""Dice from true-positive, false-positive and false-negative counts (as smp's ``get_stats`` and nnU-Net)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of a whole image; 1.0 when both masks are empty (documented convention), 0.0 when only one is."""
    return confusion_counts(prediction, truth).dice
