"""Tests for segft.metrics: confusion counts and Dice, with the empty-mask conventions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segft.metrics import Counts, confusion_counts


def dice(prediction, truth) -> float:
    """Dice of a whole image from its counts (1.0 when both masks are empty)."""
    return confusion_counts(prediction, truth).dice


def m(rows: list[str]) -> np.ndarray:
    """A boolean mask from rows of '#' (foreground) and '.' (background)."""
    return np.array([[char == "#" for char in row] for row in rows])


DICE_CASES = [  # name, prediction, truth, expected Dice
    ("both empty", m(["...", "..."]), m(["...", "..."]), 1.0),  # documented convention: nothing to find, none found
    ("prediction empty", m(["...", "..."]), m([".#.", "..."]), 0.0),
    ("truth empty", m(["##.", "..."]), m(["...", "..."]), 0.0),
    ("perfect", m([".##", "#.."]), m([".##", "#.."]), 1.0),
    ("all foreground", m(["###", "###"]), m(["###", "###"]), 1.0),
    ("disjoint", m(["#..", "..."]), m(["..#", "..."]), 0.0),
    # TP 1, FP 1, FN 1: 2 * 1 / (2 + 1 + 1) = 0.5
    ("half", m(["##.", "..."]), m(["#.#", "..."]), 0.5),
    # TP 2, FP 1, FN 0: 4 / 5
    ("one extra pixel", m(["###", "..."]), m(["##.", "..."]), 0.8),
    # TP 2, FP 0, FN 3: 4 / 7
    ("under-segmented", m(["##.", "..."]), m(["###", "##."]), 4 / 7),
]


@pytest.mark.parametrize("name, prediction, truth, expected", DICE_CASES)
def test_dice(name, prediction, truth, expected):
    assert dice(prediction, truth) == pytest.approx(expected)


@pytest.mark.parametrize("name, prediction, truth, expected", DICE_CASES)
def test_dice_is_symmetric(name, prediction, truth, expected):
    assert dice(truth, prediction) == pytest.approx(expected)


COUNT_CASES = [  # prediction, truth, (tp, fp, fn)
    (m(["...", "..."]), m(["...", "..."]), (0, 0, 0)),
    (m(["##.", "..."]), m(["#.#", "..."]), (1, 1, 1)),
    (m(["###", "..."]), m(["##.", "..."]), (2, 1, 0)),
    (m(["##.", "..."]), m(["###", "##."]), (2, 0, 3)),
    (m(["###", "###"]), m(["...", "..."]), (0, 6, 0)),
]


@pytest.mark.parametrize("prediction, truth, counts", COUNT_CASES)
def test_confusion_counts(prediction, truth, counts):
    result = confusion_counts(prediction, truth)
    assert (result.tp, result.fp, result.fn) == counts
    assert all(type(value) is int for value in (result.tp, result.fp, result.fn))


@pytest.mark.parametrize("convert", [
    lambda mask: mask.astype(np.uint8) * 255,  # 0/255 image
    lambda mask: mask.astype(np.float32),  # 0.0/1.0
    lambda mask: mask.astype(np.int64) * 3,
])
def test_any_nonzero_value_is_foreground(convert):
    prediction, truth = m(["###", "..."]), m(["##.", "#.."])
    expected = confusion_counts(prediction, truth)
    assert confusion_counts(convert(prediction), convert(truth)) == expected == Counts(tp=2, fp=1, fn=1)


@pytest.mark.parametrize("prediction_shape, truth_shape", [((2, 3), (3, 2)), ((4, 4), (4, 5)), ((4,), (2, 2))])
def test_shape_mismatch_raises(prediction_shape, truth_shape):
    pattern = rf"prediction shape \({prediction_shape[0]},.*differs from ground truth shape \({truth_shape[0]},"
    with pytest.raises(ValueError, match=pattern):
        confusion_counts(np.zeros(prediction_shape, bool), np.zeros(truth_shape, bool))
    with pytest.raises(ValueError, match="differs from ground truth shape"):
        dice(np.zeros(prediction_shape, bool), np.zeros(truth_shape, bool))


COUNTS_DICE_CASES = [  # Counts, Dice = 2 TP / (2 TP + FP + FN)
    (Counts(0, 0, 0), 1.0),
    (Counts(0, 5, 0), 0.0),
    (Counts(0, 0, 5), 0.0),
    (Counts(10, 0, 0), 1.0),
    (Counts(3, 2, 4), 6 / 12),
    (Counts(90, 10, 20), 180 / 210),
]


@pytest.mark.parametrize("counts, expected", COUNTS_DICE_CASES)
def test_counts_dice(counts, expected):
    assert counts.dice == pytest.approx(expected)


def test_counts_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Counts(1, 2, 3).tp = 5


def test_summed_counts_give_a_dataset_dice_different_from_the_mean_of_image_dices():
    """Counts add up across images (as nnU-Net sums them); the Dice of the sum is not the mean of the Dices."""
    small = confusion_counts(m(["#.", ".."]), m(["##", ".."]))  # TP 1, FN 1: 2/3
    large = confusion_counts(m(["####", "####"]), m(["####", "####"]))  # perfect: 1
    total = Counts(small.tp + large.tp, small.fp + large.fp, small.fn + large.fn)
    assert (small.dice, large.dice) == (pytest.approx(2 / 3), 1.0)
    assert total.dice == pytest.approx(2 * 9 / (2 * 9 + 1))
