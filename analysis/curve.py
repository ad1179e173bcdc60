"""The learning curve: how Dataset 2 Dice grows with the number of fine-tuning images, and what that predicts.

For each trained arm run at three sizes or more, Dice(n) = a - b * n^(-c) (an inverse power law: a is the
Dice the arm tends to, b and c how fast it gets there) is fitted to the mean Dice of each size by weighted least
squares, each size weighted by the inverse variance of its mean (from its interval), as in Figueroa et al.,
"Predicting sample size required for classification performance", BMC Med Inform Decis Mak 12:8 (2012). The fit
profiles c over a fixed log-spaced grid (``EXPONENTS``) and solves a and b in closed form for each c, so that a
thousand refits take milliseconds and never fail to converge.

**Intervals** come from the study's crossed bootstrap (``analysis.summary.Resamples``: repeats and test images
drawn once per resample, shared by every size): in each resample every size's mean is recomputed on the drawn
repeats and images, rescaled for few repeats and images as ``summary`` does, and the curve is refitted; the
percentiles of what each refit predicts give the interval (``CURVE_RESAMPLES`` resamples), widened around the
estimate by t/z with the Satterthwaite degrees of freedom of the largest size's repeat and image variance parts,
as ``summary`` widens its intervals for few repeats. Measured in ``tests/test_curve.py``'s simulated studies
(4 sizes, 5 repeats, 11 images, 200 studies): the 95 % interval of Dice at n = 40 covers the true curve 96.5 % of
the time, the back-test's at n = 20 95 % (94.5 % and 94 % without the widening).

**Answers**: Dice at a larger n (extrapolated: said plainly when beyond twice the largest size run); the images
needed for a target Dice, or "not reached within ``NOT_REACHED_FACTOR`` x the largest size" (never an absurd n);
and a back-test: the curve fitted without the largest size predicts it, next to the measured value, so a reader
sees how far to trust an extrapolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.summary import Resamples
from segft.schema import DATASET2, TRAINED_ARMS

#: The exponents c the fit profiles over (log-spaced; a learning curve's c is usually between 0.1 and 2).
EXPONENTS = np.geomspace(0.02, 4.0, 400)
#: Resamples of the crossed bootstrap refitted for the curve's intervals.
CURVE_RESAMPLES = 1000
#: "Images needed" beyond this many times the largest size run is reported as not reached.
NOT_REACHED_FACTOR = 5
#: Fewest sizes a curve is fitted to (three parameters).
MIN_SIZES = 3
CONFIDENCE = 0.95
#: A size whose interval has no width (one repeat, identical Dice) gets this standard error.
MIN_STANDARD_ERROR = 1e-3


@dataclass(frozen=True)
class Curve:
    """Dice(n) = a - b * n^(-c)."""

    a: float
    b: float
    c: float

    def __call__(self, n: float | np.ndarray) -> float | np.ndarray:
        return self.a - self.b * np.power(n, -self.c)

    def images_for(self, target: float) -> float:
        """The n at which the curve reaches ``target``: inf when it never does (it levels off below, or falls)."""
        if self.b <= 0 or target >= self.a:
            return float("inf")
        return float((self.b / (self.a - target)) ** (1 / self.c))


def fit_curves(sizes: np.ndarray, means: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, ...]:
    """Weighted least-squares fits of a - b * n^(-c), one per row of ``means``.

    Args:
        sizes: ``(S,)`` the sizes run.
        means: ``(R, S)`` mean Dice per size, one fit per row.
        errors: ``(S,)`` standard error of each size's mean (the weights are their inverse squares).

    Returns:
        ``(a, b, c)``, each ``(R,)``.
    """
    weights = 1 / np.maximum(errors, MIN_STANDARD_ERROR) ** 2
    powers = np.power.outer(np.asarray(sizes, float), -EXPONENTS).T  # (C, S): n^(-c)
    sw, swx = weights.sum(), powers @ weights  # (,), (C,)
    swxx = (powers**2) @ weights  # (C,)
    swy = means @ weights  # (R,)
    swxy = (means * weights) @ powers.T  # (R, C)
    # minimise sum w (y - a + b x)^2 over a and -b (a line in x = n^(-c)) for every c at once
    slope = (sw * swxy - swx * swy[:, None]) / (sw * swxx - swx**2)  # (R, C): the coefficient of x, i.e. -b
    intercept = (swy[:, None] - slope * swx) / sw  # (R, C): a
    residual = means[:, None, :] - intercept[..., None] - slope[..., None] * powers[None]
    best = np.argmin((residual**2 * weights).sum(axis=2), axis=1)
    rows = np.arange(len(means))
    return intercept[rows, best], -slope[rows, best], EXPONENTS[best]


def fit_curve(sizes: np.ndarray, means: np.ndarray, errors: np.ndarray) -> Curve:
    """One weighted least-squares fit (``fit_curves``) of the mean Dice per size."""
    a, b, c = fit_curves(np.asarray(sizes, float), np.asarray(means, float)[None], np.asarray(errors, float))
    return Curve(float(a[0]), float(b[0]), float(c[0]))


def resampled_means(plan: Resamples, dataset: str, matrix: np.ndarray) -> np.ndarray:
    """Per resample of ``plan``, the mean of a cell's repeats x images ``matrix`` (``Resamples.matrix``) on the
    drawn repeats and images, its repeat, image and interaction parts rescaled by sqrt(R/(R-1)) and
    sqrt(I/(I-1)) as ``Resamples.interval`` does (Rao & Wu 1988)."""
    present, values = ~np.isnan(matrix), np.nan_to_num(matrix)
    n_repeats, n_images = matrix.shape
    k_repeats = np.sqrt(n_repeats / (n_repeats - 1)) if n_repeats > 1 else 1.0
    k_images = np.sqrt(n_images / (n_images - 1)) if n_images > 1 else 1.0
    by_repeat, by_image = plan.repeat_weights, plan.image_weights[dataset]
    all_repeats, all_images = np.full((1, n_repeats), 1 / n_repeats), np.full((1, n_images), 1 / n_images)

    def weighted(repeat_weights: np.ndarray, image_weights: np.ndarray) -> np.ndarray:
        total = ((repeat_weights @ values) * image_weights).sum(axis=1)
        weight = ((repeat_weights @ present) * image_weights).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / weight, np.nan)

    m = np.nanmean(matrix)
    both = weighted(by_repeat, by_image) - m
    repeats_only = weighted(by_repeat, all_images) - m
    images_only = weighted(all_repeats, by_image) - m
    interaction = both - repeats_only - images_only
    return m + k_repeats * repeats_only + k_images * images_only + k_repeats * k_images * interaction


@dataclass(frozen=True)
class CurveAnswer:
    """What one arm's learning curve says.

    Attributes:
        arm: The arm (``finetune``, ``scratch``, ``joint``).
        sizes: The sizes it was fitted to.
        curve: The fit to the mean Dice of each size.
        at_n: The size extrapolated to (``extrapolate_to``).
        dice_at_n: ``(estimate, low, high)`` of Dataset 2 Dice at ``at_n``.
        target: The target Dice.
        images_needed: ``(estimate, low, high)`` images for ``target``; inf where it is not reached within
            ``NOT_REACHED_FACTOR`` x the largest size.
        backtest: ``(predicted, low, high, measured)`` at the largest size by the curve fitted to the others;
            None with fewer than ``MIN_SIZES`` + 1 sizes.
    """

    arm: str
    sizes: tuple[int, ...]
    curve: Curve
    at_n: int
    dice_at_n: tuple[float, float, float]
    target: float
    images_needed: tuple[float, float, float]
    backtest: tuple[float, float, float, float] | None

    def sentences(self) -> list[str]:
        """The answers in words."""
        largest = max(self.sizes)
        dice, low, high = self.dice_at_n
        beyond = " (beyond twice the largest size run: trust it less)" if self.at_n > 2 * largest else ""
        lines = [f"{self.arm}: Dataset 2 Dice at n = {self.at_n} (extrapolated): {dice:.3f} [{low:.3f}, {high:.3f}]"
                 f"{beyond}",
                 f"{self.arm}: images needed for Dice {self.target:g}: {_images(*self.images_needed, largest)}"]
        if self.backtest:
            predicted, low, high, measured = self.backtest
            inside = "inside" if low <= measured <= high else "OUTSIDE"
            lines.append(f"{self.arm}: back-test, fitted on n = {', '.join(map(str, self.sizes[:-1]))}: predicts "
                         f"{predicted:.3f} [{low:.3f}, {high:.3f}] at n = {largest}, measured {measured:.3f} "
                         f"({inside} the interval)")
        return lines


def _images(estimate: float, low: float, high: float, largest: int) -> str:
    cap = NOT_REACHED_FACTOR * largest
    if not np.isfinite(estimate):
        return f"not reached within {NOT_REACHED_FACTOR} x the largest size (n = {cap})"
    upper = f"> {cap} (not reached in some resamples)" if not np.isfinite(high) else f"{high:.0f}"
    beyond = "; beyond twice the largest size run: trust it less" if estimate > 2 * largest else ""
    return f"{estimate:.0f} [{low:.0f}, {upper}]{beyond}"


def _widening(matrix: np.ndarray) -> float:
    """t(df) / z at ``CONFIDENCE``, df the Satterthwaite (1946) degrees of freedom of the repeat and image variance
    parts of the mean of a repeats x images ``matrix``; 1 when neither varies."""
    parts = []
    for axis, count in ((1, matrix.shape[0]), (0, matrix.shape[1])):
        means = np.nanmean(matrix, axis=axis)
        if count > 1 and np.nanvar(means) > 1e-20:
            parts.append((np.nanvar(means, ddof=1) / count, count - 1))
    if not parts:
        return 1.0
    df = sum(v for v, _ in parts) ** 2 / sum(v**2 / d for v, d in parts)
    q = (1 + CONFIDENCE) / 2
    return float(stats.t.ppf(q, df) / stats.norm.ppf(q))


def _interval(estimate: float, samples: np.ndarray, widen: float, value_range: tuple[float, float]
              ) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the percentile interval of ``samples`` widened around ``estimate`` by ``widen``,
    clipped to ``value_range`` (an infinite bound stays infinite)."""
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], method="nearest")
    with np.errstate(invalid="ignore"):
        low, high = (estimate - widen * (estimate - low), estimate + widen * (high - estimate)) if np.isfinite(
            estimate) else (low, high)
    return float(estimate), float(np.clip(low, *value_range)), float(np.clip(high, *value_range))


def _capped(needed: np.ndarray, largest: int) -> np.ndarray:
    return np.where(needed <= NOT_REACHED_FACTOR * largest, needed, np.inf)


def _fit_arm(arm_rows: pd.DataFrame, plan: Resamples, sizes: list[int]) -> tuple[Curve, np.ndarray, np.ndarray,
                                                                                 np.ndarray, float]:
    """The point fit, the per-resample fits (a, b, c arrays) of one arm at ``sizes``, and the widening of their
    intervals (``_widening`` of the largest size)."""
    means, resampled = [], []
    for n in sizes:
        dataset, matrix = plan.matrix(arm_rows[arm_rows["n_images"] == n], "dice")
        means.append(np.nanmean(matrix))
        resampled.append(resampled_means(plan, dataset, matrix))
    resampled = np.column_stack(resampled)
    resampled = resampled[np.isfinite(resampled).all(axis=1)]
    errors = np.nanstd(resampled, axis=0)
    sizes_array = np.asarray(sizes, float)
    return (fit_curve(sizes_array, np.asarray(means), errors), *fit_curves(sizes_array, resampled, errors),
            _widening(matrix))


def learning_curves(tidy: pd.DataFrame, target: float, extrapolate_to: int | None = None,
                    n_resamples: int = CURVE_RESAMPLES, random_state: int = 0) -> list[CurveAnswer]:
    """The learning curve of every trained arm with at least ``MIN_SIZES`` sizes on Dataset 2's test images.

    Args:
        tidy: The study's tidy table (``analysis.query.TIDY_COLUMNS``).
        target: The Dice whose images-needed is asked (``ReportConfig.dice_target``).
        extrapolate_to: The n to predict Dice at; None: twice the largest size.
        n_resamples, random_state: The crossed bootstrap's.
    """
    rows = tidy[(tidy["dataset"] == DATASET2) & tidy["arm"].isin(TRAINED_ARMS)]
    if rows.empty:
        return []
    plan = Resamples.draw(rows, n_resamples, random_state)
    answers = []
    for arm in [a for a in TRAINED_ARMS if (rows["arm"] == a).any()]:
        arm_rows = rows[rows["arm"] == arm]
        sizes = sorted(int(n) for n in arm_rows["n_images"].unique())
        if len(sizes) < MIN_SIZES:
            continue
        largest = sizes[-1]
        at_n = extrapolate_to or 2 * largest
        curve, a, b, c, widen = _fit_arm(arm_rows, plan, sizes)
        dice = np.clip(a - b * np.power(float(at_n), -c), 0, 1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            needed = _capped(np.where((b > 0) & (target < a), (b / (a - target)) ** (1 / c), np.inf), largest)
        estimate = float(_capped(np.array([curve.images_for(target)]), largest)[0])
        backtest = None
        if len(sizes) > MIN_SIZES:
            fitted, a0, b0, c0, widen0 = _fit_arm(arm_rows, plan, sizes[:-1])
            predicted = np.clip(a0 - b0 * np.power(float(largest), -c0), 0, 1)
            measured = float(arm_rows.loc[arm_rows["n_images"] == largest, "dice"].mean())
            backtest = (*_interval(float(np.clip(fitted(largest), 0, 1)), predicted, widen0, (0, 1)), measured)
        answers.append(CurveAnswer(arm, tuple(sizes), curve, at_n,
                                   _interval(float(np.clip(curve(at_n), 0, 1)), dice, widen, (0, 1)), target,
                                   _interval(estimate, needed, widen, (1, np.inf)), backtest))
    return answers


def curve_table(answers: list[CurveAnswer]) -> pd.DataFrame:
    """The answers as a table for the report and ``learning_curve.csv``."""
    rows = []
    for answer in answers:
        largest = max(answer.sizes)
        dice, low, high = answer.dice_at_n
        row = {"arm": answer.arm, "sizes": ",".join(map(str, answer.sizes)),
               "curve": f"{answer.curve.a:.3f} - {answer.curve.b:.3f} n^-{answer.curve.c:.2f}",
               f"Dice at n (extrapolated)": f"n={answer.at_n}: {dice:.3f} [{low:.3f}, {high:.3f}]",
               f"images for Dice {answer.target:g}": _images(*answer.images_needed, largest)}
        if answer.backtest:
            predicted, low, high, measured = answer.backtest
            row["back-test at the largest n"] = (f"predicted {predicted:.3f} [{low:.3f}, {high:.3f}], measured "
                                                 f"{measured:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)
