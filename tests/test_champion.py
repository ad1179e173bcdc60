"""The rule by which a study picks the fine-tuned model it recommends (alias ``champion``)."""

from __future__ import annotations

import pytest

from segft.study import Candidate, choose_champion


def c(key: str, n_images: int, repeat: int, val_dice: float | None, degenerate: str = "") -> Candidate:
    return Candidate(key, f"models:/segft-finetuned/{key}", n_images, repeat, val_dice, degenerate)


CHAMPION_CASES = [  # name, candidates, expected key
    ("highest validation Dice wins", [c("a", 5, 0, 0.7), c("b", 10, 0, 0.8), c("c", 15, 0, 0.75)], "b"),
    ("fewer images may win", [c("a", 5, 0, 0.9), c("b", 15, 0, 0.8)], "a"),
    ("a tie goes to more images", [c("a", 5, 0, 0.8), c("b", 10, 1, 0.8)], "b"),
    ("then to the lower repeat", [c("a", 10, 2, 0.8), c("b", 10, 1, 0.8)], "b"),
    ("runs without validation images do not compete with validated ones",
     [c("all", 20, 0, None), c("a", 15, 0, 0.6)], "a"),
    ("none validated: most images", [c("a", 10, 0, None), c("b", 20, 1, None)], "b"),
    ("none validated: most images, then repeat 0", [c("a", 20, 1, None), c("b", 20, 0, None), c("c", 5, 0, None)], "b"),
    ("a degenerate run never wins", [c("a", 5, 0, 0.9, "marks 5x"), c("b", 10, 0, 0.6)], "b"),
    ("nor does an unvalidated one when all validated ones are degenerate",
     [c("a", 5, 0, 0.9, "marks 5x"), c("all", 20, 0, None)], "all"),
]


@pytest.mark.parametrize("name, candidates, expected", CHAMPION_CASES, ids=[case[0] for case in CHAMPION_CASES])
def test_choose_champion(name, candidates, expected):
    assert choose_champion(candidates).key == expected


def test_no_candidates_no_champion():
    assert choose_champion([]) is None


def test_all_degenerate_no_champion():
    assert choose_champion([c("a", 5, 0, 0.9, "stuck"), c("b", 10, 0, 0.8, "marks 5x")]) is None
