"""The learning curve (analysis/curve.py): the fit recovers a known curve, its bootstrap interval covers the truth
in simulated studies, "images needed" inverts it or says "not reached", and the back-test is made."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import curve

TRUE = curve.Curve(a=0.85, b=0.9, c=0.8)


def simulate(rng: np.random.Generator, sizes=(5, 10, 15, 20), repeats: int = 5, images: int = 11,
             repeat_sd: float = 0.03, image_sd: float = 0.08, noise_sd: float = 0.03, arm: str = "finetune"
             ) -> pd.DataFrame:
    """A study's tidy Dataset 2 rows: Dice = TRUE(n) + a repeat effect (per size) + an image effect + noise."""
    by_repeat = rng.normal(0, repeat_sd, (repeats, len(sizes)))
    by_image = rng.normal(0, image_sd, images)
    return pd.DataFrame([
        {"run_id": f"{arm}-{n}-{r}", "arm": arm, "n_images": n, "repeat": r, "dataset": "dataset2",
         "image": f"img{i:02d}", "dice": TRUE(n) + by_repeat[r, k] + by_image[i] + rng.normal(0, noise_sd)}
        for r in range(repeats) for k, n in enumerate(sizes) for i in range(images)])


def test_the_fit_recovers_a_known_curve():
    sizes = np.array([5, 10, 15, 20, 40])
    fitted = curve.fit_curve(sizes, TRUE(sizes), np.full(len(sizes), 0.01))
    assert fitted.a == pytest.approx(TRUE.a, abs=0.01) and fitted.b == pytest.approx(TRUE.b, rel=0.03)
    assert fitted.c == pytest.approx(TRUE.c, rel=0.02)  # the grid's step


def test_images_needed_inverts_the_curve_and_is_infinite_above_the_asymptote():
    assert TRUE(TRUE.images_for(0.8)) == pytest.approx(0.8)
    assert TRUE.images_for(0.85) == TRUE.images_for(0.9) == float("inf")
    assert curve.Curve(0.8, -0.2, 0.5).images_for(0.7) == float("inf")  # a falling curve never gets there


def test_the_interval_covers_the_true_curve_in_simulated_studies():
    """200 simulated studies of 4 sizes x 5 repeats x 11 images: the 95 % interval of Dice at n = 40 (twice
    the largest size) and the back-test's at n = 20 cover the true curve at least 90 % of the time."""
    rng = np.random.default_rng(1)
    covered, backtested = 0, 0
    for seed in range(200):
        answer, = curve.learning_curves(simulate(rng), target=0.8, n_resamples=200, random_state=seed)
        covered += answer.dice_at_n[1] <= TRUE(40) <= answer.dice_at_n[2]
        backtested += answer.backtest[1] <= TRUE(20) <= answer.backtest[2]
    assert covered / 200 >= 0.90 and backtested / 200 >= 0.90


def test_a_target_beyond_reach_is_reported_not_an_absurd_n():
    answer, = curve.learning_curves(simulate(np.random.default_rng(0)), target=0.95, n_resamples=200)
    assert answer.images_needed[0] == float("inf")
    assert "not reached within 5 x the largest size (n = 100)" in answer.sentences()[1]
    reachable, = curve.learning_curves(simulate(np.random.default_rng(0), noise_sd=0.0, image_sd=0.0,
                                                repeat_sd=0.001), target=0.75, n_resamples=200)
    assert reachable.images_needed[0] == pytest.approx(TRUE.images_for(0.75), rel=0.1)
    assert reachable.images_needed[1] <= reachable.images_needed[0] <= reachable.images_needed[2]


def test_arms_with_too_few_sizes_get_no_curve_and_three_sizes_no_back_test():
    rng = np.random.default_rng(0)
    tidy = pd.concat([simulate(rng, sizes=(5, 10), arm="scratch"), simulate(rng, sizes=(5, 10, 20))])
    answer, = curve.learning_curves(tidy, target=0.8, n_resamples=100)
    assert answer.arm == "finetune" and answer.backtest is None and answer.at_n == 40
    assert not [line for line in answer.sentences() if "back-test" in line]


def test_an_extrapolation_beyond_twice_the_largest_size_says_so():
    answer, = curve.learning_curves(simulate(np.random.default_rng(0)), target=0.8, extrapolate_to=60,
                                    n_resamples=100)
    assert "beyond twice the largest size run" in answer.sentences()[0]
    table = curve.curve_table([answer])
    assert list(table["arm"]) == ["finetune"] and "measured" in table["back-test at the largest n"].iloc[0]
