"""Tables from the tidy per-image Dice table: mean Dice with crossed bootstrap CIs, paired change against the raw
model, and the study's findings decided on those intervals, each also without the runs flagged as degenerate.

**How the intervals are made.** Every repeat of a study is scored on the same test images, so a (repeat, image)
Dice is a crossed effect: it moves with its repeat (the training lottery: seeds, the images drawn, and with
``base_per_repeat`` the base model) and with its image (easy or hard), and neither is nested in the other. The
interval is a two-way crossed ("pigeonhole") percentile bootstrap of the mean (McCullagh, "Resampling and
exchangeable arrays", Bernoulli 6:285, 2000; Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 1:386, 2007; for
the random-effects model behind it Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, §3.8, and
Field & Welsh, "Bootstrapping clustered data", JRSS B 69:369, 2007): each resample draws the repeats once with
replacement and each dataset's test images once with replacement (``Resamples``), and every arm, size and
difference of a study is computed on that one draw, so the interval of a difference is consistent with the
intervals of its parts. A cell with a single repeat (the threshold arm; the raw model without
``base_per_repeat``) has no training lottery: every drawn repeat is its one repeat. With one repeat in the whole
study the scheme is the image bootstrap. (Redrawing the repeats within each drawn image instead averages the
repeat-to-repeat spread away: in ``tests/test_intervals.py``'s study of 11 images and 3 repeats it covers the true
mean 49 % of the time.)

**Few repeats.** Drawn from R values, the repeats' spread is underestimated by the factor (R-1)/R, and with
3-5 repeats a percentile interval also misses the heavier tails of a mean estimated from few values. Two
corrections, both applied to every interval: the repeat and image parts of each resample's deviation from the mean
are rescaled by sqrt(R/(R-1)) and sqrt(I/(I-1)), their interaction by both (the rescaling bootstrap of Rao & Wu,
"Resampling inference with complex survey data", JASA 83:231, 1988), and the percentile interval is widened around
the mean by t(df)/z, df the Satterthwaite (Biometrics Bulletin 2:110, 1946) degrees of freedom of the repeat (R-1)
and image (I-1) variance parts, in the spirit of Hesterberg's expanded percentile interval (The American
Statistician 69:371, 2015). The crossed bootstrap also counts the repeat × image interaction more than once,
so it errs on the wide side when that interaction dominates (McCullagh 2000; Owen 2007). Measured in
``tests/test_intervals.py`` on simulated studies y = mu + repeat + image + noise of 11 images: the 95 % interval
covers mu 95 % of the time with 5 repeats (89 % without the two corrections) and 94 % with 3 repeats (81 % without).

**Flagged runs.** A trained run flagged as degenerate on its test images (``degenerate_runs``) cannot carry a
finding: ``findings`` decides each claim with every run and again without the flagged trained runs, and says
when the two verdicts disagree. A flagged raw model is the domain shift every comparison is made against, and the
threshold baseline trains nothing: neither is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.query import TIDY_COLUMNS
from segft import quality
from segft.config import StudyConfig
from segft.schema import DATASET1, DATASET2, FINETUNE_ARM, RAW_ARM, THRESHOLD_ARM, TRAINED_ARMS

#: Default equivalence margin of "Dataset 1 is kept": every change interval within ±this.
FORGETTING_MARGIN = StudyConfig.forgetting_margin
GROUP = ["arm", "n_images", "dataset"]
N_RESAMPLES = 9999
#: The range a Dice can take, and a difference of two: intervals are clipped to what their statistic can reach.
DICE_RANGE, CHANGE_RANGE = (0.0, 1.0), (-1.0, 1.0)
CI_METHOD = (f"crossed percentile bootstrap: repeats and test images drawn once per resample, shared by every arm, "
             f"size and difference; rescaled and t-widened for few repeats, clipped to the metric's range "
             f"({N_RESAMPLES} resamples)")
#: What a finding says: yes, no, undecided (its interval straddles the bound), or not tested.
YES, NO, UNDECIDED, NOT_TESTED = "yes", "no", "undecided", "not tested"
#: The columns of ``findings``.
FINDING_COLUMNS = ["claim", "verdict", "evidence", "verdict_without_flagged", "evidence_without_flagged", "agrees"]


def _check(values: np.ndarray, confidence: float) -> None:
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need at least one finite value for a confidence interval, got {values.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


@dataclass(frozen=True, eq=False)
class Resamples:
    """A study's one crossed resampling plan: in each resample the repeats drawn once with replacement and each
    dataset's test images drawn once with replacement, held as weights (times drawn / number drawn).

    Attributes:
        repeats: The study's repeat numbers, sorted.
        images: ``{dataset: image names, sorted}``.
        repeat_weights: ``(n_resamples, len(repeats))``; each row sums to 1.
        image_weights: ``{dataset: (n_resamples, len(images[dataset]))}``; each row sums to 1.
    """

    repeats: pd.Index
    images: dict[str, pd.Index]
    repeat_weights: np.ndarray
    image_weights: dict[str, np.ndarray]

    @classmethod
    def draw(cls, table: pd.DataFrame, n_resamples: int = N_RESAMPLES, random_state: int = 0) -> Resamples:
        """The plan for every cell of ``table`` (columns ``repeat``, ``image`` and, when there are several image
        sets, ``dataset``). The repeats and each dataset draw from their own seeded streams, so the image draws
        do not depend on the number of repeats."""
        table = table if "dataset" in table.columns else table.assign(dataset="")
        repeats = pd.Index(sorted(table["repeat"].unique()))
        images = {d: pd.Index(sorted(part["image"].unique())) for d, part in table.groupby("dataset", sort=True)}
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(random_state).spawn(1 + len(images))]

        def weights(rng: np.random.Generator, n: int) -> np.ndarray:
            return rng.multinomial(n, np.full(n, 1 / n), size=n_resamples) / n

        return cls(repeats, images, weights(streams[0], len(repeats)),
                   {d: weights(rng, len(names)) for (d, names), rng in zip(images.items(), streams[1:])})

    def matrix(self, rows: pd.DataFrame, value: str) -> tuple[str, np.ndarray]:
        """``(dataset, repeats × images matrix of rows[value])`` of one cell (one dataset), NaN where a repeat or
        image was not scored; a cell with a single repeat has that repeat's values in every row.

        Raises:
            ValueError: If ``rows`` span several datasets.
        """
        rows = rows if "dataset" in rows.columns else rows.assign(dataset="")
        datasets = rows["dataset"].unique()
        if len(datasets) != 1:
            raise ValueError(f"a cell holds one dataset's images, got {sorted(datasets)}")
        grid = rows.groupby(["repeat", "image"])[value].mean().unstack("image")
        if len(grid) == 1:  # no training lottery: every drawn repeat is this one
            grid = pd.DataFrame(np.repeat(grid.to_numpy(), len(self.repeats), axis=0), columns=grid.columns)
        else:
            grid = grid.reindex(index=self.repeats)
        return datasets[0], grid.reindex(columns=self.images[datasets[0]]).to_numpy(float)

    def interval(self, terms: list[tuple[float, str, np.ndarray]], confidence: float,
                 value_range: tuple[float, float] | None = None) -> tuple[float, float, float]:
        """Mean and CI of the sum of coefficient × mean of matrix over ``terms`` of (coefficient, dataset, matrix),
        the matrices from ``matrix``, every term on the same draws (module docstring: rescaled, t-widened).

        Args:
            value_range: The range every matrix entry can take (``DICE_RANGE``, ``CHANGE_RANGE``); the interval is
                clipped to the range the statistic can take then (the t-widening can push a bound of a Dice
                near 1 past 1). None: not clipped.

        Returns:
            ``(mean, low, high)``; ``low == high == mean`` when no resample moves the statistic.
        """
        n_repeats = len(self.repeats)
        k_repeats = np.sqrt(n_repeats / (n_repeats - 1)) if n_repeats > 1 else 1.0
        mean, repeat_part, interaction = 0.0, 0.0, 0.0
        image_parts: dict[str, np.ndarray | float] = {}
        for coefficient, dataset, matrix in terms:
            present, values = ~np.isnan(matrix), np.nan_to_num(matrix)
            n_images = matrix.shape[1]
            k_images = np.sqrt(n_images / (n_images - 1)) if n_images > 1 else 1.0
            by_repeat, by_image = self.repeat_weights, self.image_weights[dataset]
            all_repeats, all_images = np.full((1, n_repeats), 1 / n_repeats), np.full((1, n_images), 1 / n_images)
            # the deviation of each resample splits into a repeat part, an image part and their interaction
            m = np.nanmean(matrix)
            both = _weighted_mean(by_repeat, by_image, values, present) - m
            repeats_only = _weighted_mean(by_repeat, all_images, values, present) - m
            images_only = _weighted_mean(all_repeats, by_image, values, present) - m
            mean += coefficient * m
            repeat_part = repeat_part + coefficient * k_repeats * repeats_only
            image_parts[dataset] = image_parts.get(dataset, 0.0) + coefficient * k_images * images_only
            interaction = interaction + coefficient * k_repeats * k_images * (both - repeats_only - images_only)
        deviations = np.broadcast_to(repeat_part + sum(image_parts.values()) + interaction,
                                     self.repeat_weights.shape[:1])
        deviations = deviations[np.isfinite(deviations)]  # resamples that drew no scored cell of a term
        if deviations.size == 0 or np.abs(deviations).max() < 1e-12:
            return float(mean), float(mean), float(mean)
        parts = [(np.nanvar(repeat_part), n_repeats - 1)]
        parts += [(np.nanvar(part), len(self.images[d]) - 1) for d, part in image_parts.items()]
        low, high = np.quantile(deviations, [(1 - confidence) / 2, (1 + confidence) / 2])
        widen = _t_over_z(parts, confidence)
        low, high = mean + widen * low, mean + widen * high
        if value_range is not None:
            reachable = [sum(c * (value_range[0] if (c > 0) == lowest else value_range[1]) for c, _, _ in terms)
                         for lowest in (True, False)]
            low, high = np.clip([low, high], *reachable)
        return float(mean), float(low), float(high)


def _weighted_mean(repeat_weights: np.ndarray, image_weights: np.ndarray, values: np.ndarray,
                   present: np.ndarray) -> np.ndarray:
    """Per resample, the mean of the scored cells under the weights (NaN where every drawn cell is unscored)."""
    total = ((repeat_weights @ values) * image_weights).sum(axis=1)
    weight = ((repeat_weights @ present) * image_weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, np.nan)


def _t_over_z(parts: list[tuple[float, int]], confidence: float) -> float:
    """t(df) / z at ``confidence``, df the Satterthwaite (1946) degrees of freedom of the variance ``parts`` of
    ``(variance, df)``; 1 when no part with a df has any variance."""
    parts = [(v, df) for v, df in parts if df > 0 and v > 1e-20]  # float noise of a constant part is no part
    if not parts:
        return 1.0
    df = sum(v for v, _ in parts) ** 2 / sum(v**2 / df for v, df in parts)
    q = (1 + confidence) / 2
    return float(stats.t.ppf(q, df) / stats.norm.ppf(q))


def crossed_ci(table: pd.DataFrame, value: str = "dice", confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
               random_state: int = 0) -> tuple[float, float]:
    """Crossed percentile bootstrap CI of the mean of ``table[value]`` over repeats (column ``repeat``) × test
    images (``image``, per ``dataset`` when the table has that column); see the module docstring.

    Returns:
        ``(low, high)``; ``(v, v)`` when all values are equal.

    Raises:
        ValueError: If there are no finite values or ``confidence`` is outside (0, 1).
    """
    values = table[value].to_numpy(float) if value in table.columns else np.array([])
    _check(values, confidence)
    plan = Resamples.draw(table, n_resamples, random_state)
    table = table if "dataset" in table.columns else table.assign(dataset="")
    weight = table.groupby("dataset").size() / len(table)  # the mean over all rows: each dataset by its share
    terms = [(weight[d], *plan.matrix(part, value)) for d, part in table.groupby("dataset", sort=True)]
    _, low, high = plan.interval(terms, confidence)
    return low, high


def check_tidy(tidy: pd.DataFrame) -> None:
    """Raise ValueError unless ``tidy`` is a non-empty table with the tidy columns (see ``analysis.query``)."""
    missing = [c for c in TIDY_COLUMNS if c not in tidy.columns]
    if missing:
        raise ValueError(f"tidy table lacks columns {missing}; expected {TIDY_COLUMNS}")
    if tidy.empty:
        raise ValueError("tidy table is empty: the study has no evaluated runs")


def arm_first(column: pd.Series) -> pd.Series:
    """Sort key for ``DataFrame.sort_values(key=...)``: the raw model, the threshold baseline, then the other arms
    (alphabetical)."""
    return column.map(lambda arm: (arm != RAW_ARM, arm != THRESHOLD_ARM, arm)) if column.name == "arm" else column


def _ci_table(table: pd.DataFrame, column: str, plan: Resamples, confidence: float,
              value_range: tuple[float, float]) -> pd.DataFrame:
    rows = []
    for key, part in table.groupby(GROUP, sort=True):
        mean, low, high = plan.interval([(1.0, *plan.matrix(part, column))], confidence, value_range)
        rows.append({**dict(zip(GROUP, key)), "mean": mean, "std": part[column].std(),
                     "ci_low": low, "ci_high": high, "count": len(part), "images": part["image"].nunique(),
                     "repeats": part["repeat"].nunique(), "ci_method": CI_METHOD})
    return pd.DataFrame(rows).sort_values(GROUP, key=arm_first, ignore_index=True)


def summarize(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean, std and crossed bootstrap CI of the per-image Dice for every arm × n_images × dataset, all on one
    resampling plan (``Resamples``, seeded by ``random_state``).

    Returns:
        Columns ``arm, n_images, dataset, mean, std, ci_low, ci_high, count, images, repeats, ci_method``; std is
        NaN for a single value.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return _ci_table(tidy, "dice", Resamples.draw(tidy, random_state=random_state), confidence, DICE_RANGE)


def repeat_means(tidy: pd.DataFrame) -> pd.DataFrame:
    """Each repeat's mean Dice over the test images, per arm × n_images × dataset: the spread ``summarize``'s
    interval has to cover.

    Returns:
        Columns ``arm, n_images, dataset, repeat, mean``.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return tidy.groupby([*GROUP, "repeat"], as_index=False)["dice"].mean().rename(columns={"dice": "mean"})


def paired_differences(tidy: pd.DataFrame) -> pd.DataFrame:
    """Every non-raw row with the raw model's Dice on the same test image and ``change = dice - raw_dice``.

    The pairing is per test image and, when the raw model has repeats (``base_per_repeat``: one base model per
    repeat), per repeat too: each repeat's runs start from that repeat's base model. Without raw repeats every
    repeat is paired with the one raw model.

    Raises:
        ValueError: If the table has no raw rows, several raw rows per image and repeat, or images the raw
            model lacks.
    """
    check_tidy(tidy)
    raw = tidy[tidy["arm"] == RAW_ARM][["dataset", "image", "repeat", "dice"]]
    if raw.empty:
        raise ValueError(f"no {RAW_ARM!r} rows: paired change needs the raw model's per-image Dice")
    keys = ["dataset", "image", "repeat"] if raw["repeat"].nunique() > 1 else ["dataset", "image"]
    raw = raw[keys + ["dice"]]
    if raw.duplicated(keys).any():
        raise ValueError("the raw model has several rows for one test image and repeat; expected one raw run "
                         "per repeat")
    others = tidy[tidy["arm"] != RAW_ARM]
    paired = others.merge(raw, on=keys, how="left", suffixes=("", "_raw"), validate="many_to_one")
    unmatched = paired[paired["dice_raw"].isna()]
    if not unmatched.empty:
        first = unmatched.iloc[0]
        raise ValueError(f"the raw model has no Dice for {first['dataset']}/{first['image']} "
                         f"(repeat {first['repeat']})")
    return paired.rename(columns={"dice_raw": "raw_dice"}).assign(change=lambda t: t["dice"] - t["raw_dice"])


def _change_table(tidy: pd.DataFrame, plan: Resamples, confidence: float) -> pd.DataFrame:
    diffs = paired_differences(tidy)
    if diffs.empty:
        raise ValueError("no runs besides the raw model to compare with it")
    return _ci_table(diffs, "change", plan, confidence, CHANGE_RANGE).rename(columns={"mean": "mean_change"})


def paired_change(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean paired change of Dice against the raw model with a crossed bootstrap CI, per arm × n_images ×
    dataset: the change per (repeat, image) resampled on the plan ``summarize`` uses (same ``random_state``).

    Returns:
        Columns ``arm, n_images, dataset, mean_change, std, ci_low, ci_high, count, images, repeats, ci_method``.

    Raises:
        ValueError: See ``paired_differences``.
    """
    check_tidy(tidy)
    return _change_table(tidy, Resamples.draw(tidy, random_state=random_state), confidence)


def repeat_change(tidy: pd.DataFrame) -> pd.DataFrame:
    """Each repeat's mean paired change against the raw model (over the test images), per arm × n_images × dataset:
    how far single repeats stray from ``paired_change``'s mean.

    Returns:
        Columns ``arm, n_images, dataset, repeat, mean_change``.

    Raises:
        ValueError: See ``paired_differences``.
    """
    per_repeat = paired_differences(tidy).groupby([*GROUP, "repeat"], as_index=False)["change"].mean()
    return per_repeat.rename(columns={"change": "mean_change"})


def _fmt(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def above_zero(low: float, high: float) -> str:
    """``yes`` when the interval lies above 0, ``no`` when it lies at or below 0, else ``undecided``."""
    return YES if low > 0 else NO if high <= 0 else UNDECIDED


def within_margin(intervals: list[tuple[float, float]], margin: float) -> str:
    """An equivalence verdict (two one-sided intervals, Schuirmann 1987): ``yes`` when every interval lies
    within ±``margin``, ``no`` when one lies wholly outside it, else ``undecided``."""
    if all(-margin <= low and high <= margin for low, high in intervals):
        return YES
    if any(high < -margin or low > margin for low, high in intervals):
        return NO
    return UNDECIDED


def _raw_gap(tidy: pd.DataFrame, plan: Resamples, confidence: float) -> dict[str, object]:
    claim = "Raw model: Dataset 2 Dice is below Dataset 1 Dice"
    raw = tidy[tidy["arm"] == RAW_ARM]
    parts = [raw[raw["dataset"] == d] for d in (DATASET1, DATASET2)]
    if any(p.empty for p in parts):
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "no raw-model Dice for both datasets"}
    terms = [(sign, *plan.matrix(part, "dice")) for sign, part in zip((1.0, -1.0), parts)]
    gap, low, high = plan.interval(terms, confidence, DICE_RANGE)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"Dataset 1 − Dataset 2, on the same repeat draws: {_fmt(gap, low, high)} "
                        f"({raw['repeat'].nunique()} raw model(s)); yes when the interval lies above 0"}


def _trend(ft: pd.DataFrame) -> str:
    """Page's L test (Page 1963) for Dice increasing with the number of images. Its blocks must be independent:
    one per test image, the image's mean Dice over the repeats at each size (repeats are crossed with images,
    so (repeat, image) blocks would not be)."""
    blocks = ft.pivot_table(index="image", columns="n_images", values="dice", aggfunc="mean").dropna()
    if blocks.shape[1] < 3 or len(blocks) < 2:
        return "trend across sizes: needs 3 or more sizes and 2 or more test images"
    result = stats.page_trend_test(blocks.to_numpy())
    sizes = " < ".join(str(n) for n in blocks.columns)
    return (f"Page's L test for Dice increasing over n = {sizes} ({len(blocks)} test images, each its mean over "
            f"the repeats): L = {result.statistic:.0f}, p = {result.pvalue:.2g} "
            f"({'an increasing trend' if result.pvalue < 0.05 else 'no significant trend'} at 5 %)")


def _size_gain(tidy: pd.DataFrame, plan: Resamples, confidence: float) -> dict[str, object]:
    ft = tidy[(tidy["arm"] == FINETUNE_ARM) & (tidy["dataset"] == DATASET2)]
    sizes = sorted(ft["n_images"].unique())
    claim = "Fine-tuning: Dataset 2 Dice with the most images exceeds Dice with the fewest"
    if len(sizes) < 2:
        return {"claim": claim, "verdict": NOT_TESTED,
                "evidence": f"needs finetune runs at two sizes, found {[int(n) for n in sizes]}"}
    small, large = (ft[ft["n_images"] == n].set_index(["repeat", "image"])["dice"] for n in (sizes[0], sizes[-1]))
    diff = (large - small).dropna().rename("diff").reset_index().assign(dataset=DATASET2)
    if diff.empty:
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "no (repeat, image) pair evaluated at both sizes"}
    mean, low, high = plan.interval([(1.0, *plan.matrix(diff, "diff"))], confidence, CHANGE_RANGE)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"n={sizes[-1]} minus n={sizes[0]}, paired per (repeat, image): "
                        f"{_fmt(mean, low, high)}; yes when the interval lies above 0. {_trend(ft)}"}


def _forgetting(tidy: pd.DataFrame, plan: Resamples, margin: float, confidence: float) -> dict[str, object]:
    claim = f"Fine-tuning keeps Dataset 1: the change against the raw model lies within ±{margin:g} at every size"
    subset = tidy[(tidy["arm"].isin([RAW_ARM, FINETUNE_ARM])) & (tidy["dataset"] == DATASET1)]
    if not (subset["arm"] == FINETUNE_ARM).any() or not (subset["arm"] == RAW_ARM).any():
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "needs raw and finetune Dataset 1 Dice"}
    change = _change_table(subset, plan, confidence)
    parts = [f"n={row.n_images}: {_fmt(row.mean_change, row.ci_low, row.ci_high)}" for row in change.itertuples()]
    verdict = within_margin(list(zip(change["ci_low"], change["ci_high"])), margin)
    return {"claim": claim, "verdict": verdict,
            "evidence": "change " + ", ".join(parts) + f"; equivalence margin ±{margin:g}: yes when every interval "
                        "lies inside it, no when one lies wholly outside, undecided otherwise"}


def degenerate_runs(tidy: pd.DataFrame) -> pd.DataFrame:
    """The runs whose test masks are degenerate (``segft.quality.flag_runs``): predicted foreground over 3x or
    under 1/3 of the truth on a dataset's test images, or the same masks as another size of the same arm and
    repeat. Empty when the tidy table has no pixel counts (runs logged before segft recorded them)."""
    if not {"tp", "fp", "fn"} <= set(tidy.columns):
        return quality.flag_runs(pd.DataFrame())
    return quality.flag_runs(tidy)


def flagged_trained_runs(tidy: pd.DataFrame) -> list[str]:
    """Run ids of the trained runs (``TRAINED_ARMS``) flagged by ``degenerate_runs`` on any dataset, sorted:
    the runs ``findings`` leaves out for its second verdict (a flagged raw model is the domain shift, not a
    failure; the threshold baseline trains nothing)."""
    flagged = degenerate_runs(tidy)
    return sorted(flagged.loc[flagged["arm"].isin(TRAINED_ARMS), "run_id"].unique())


def _beats_threshold(tidy: pd.DataFrame, plan: Resamples, confidence: float) -> dict[str, object]:
    claim = "Fine-tuning with the most images beats Otsu's threshold (no training) on Dataset 2"
    ft = tidy[(tidy["arm"] == FINETUNE_ARM) & (tidy["dataset"] == DATASET2)]
    baseline = tidy[(tidy["arm"] == THRESHOLD_ARM) & (tidy["dataset"] == DATASET2)].set_index("image")["dice"]
    if ft.empty or baseline.empty:
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "needs finetune and threshold runs"}
    largest = ft[ft["n_images"] == ft["n_images"].max()]
    diff = largest.assign(diff=largest["dice"] - largest["image"].map(baseline)).dropna(subset=["diff"])
    mean, low, high = plan.interval([(1.0, *plan.matrix(diff, "diff"))], confidence, CHANGE_RANGE)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"n={largest['n_images'].iloc[0]} minus threshold, paired per test image: "
                        f"{_fmt(mean, low, high)} (threshold alone: {baseline.mean():.3f}); "
                        "yes when the interval lies above 0"}


def _no_degenerate(tidy: pd.DataFrame) -> dict[str, object]:
    claim = "Every trained model gives plausible masks (none collapsed to all or no foreground, none stuck)"
    if not {"tp", "fp", "fn"} <= set(tidy.columns):
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "the runs did not log pixel counts"}
    flagged = degenerate_runs(tidy)
    flagged = flagged[flagged["arm"].isin(TRAINED_ARMS)]
    if flagged.empty:
        return {"claim": claim, "verdict": YES, "evidence": "predicted foreground within 1/3 to 3x of the truth on "
                "every test set, and different masks at every size"}
    parts = [f"{r.arm} n={r.n_images} repeat {r.repeat} {r.reason}" for r in flagged.itertuples()]
    return {"claim": claim, "verdict": NO, "evidence": f"{flagged['run_id'].nunique()} run(s) flagged: "
            + " | ".join(parts)}


def _claims(tidy: pd.DataFrame, margin: float, confidence: float, random_state: int) -> list[dict[str, object]]:
    """The interval claims of ``findings``, all on one resampling plan of ``tidy``."""
    plan = Resamples.draw(tidy, random_state=random_state)
    return [_raw_gap(tidy, plan, confidence), _size_gain(tidy, plan, confidence),
            _forgetting(tidy, plan, margin, confidence), _beats_threshold(tidy, plan, confidence)]


def findings(
    tidy: pd.DataFrame, margin: float = FORGETTING_MARGIN, confidence: float = 0.95, random_state: int = 0
) -> pd.DataFrame:
    """Check the study's claims, each decided on an interval (module docstring) and answered yes, no or undecided,
    once with every run and once without the trained runs flagged as degenerate (``flagged_trained_runs``: all
    their rows, every dataset).

    1. The raw model does worse on Dataset 2: the interval of its Dataset 1 − Dataset 2 gap lies above 0.
    2. More images help: the interval of Dice(n_max) − Dice(n_min) on Dataset 2, paired per (repeat, image),
       lies above 0; Page's L test states whether Dice rises monotonically across all sizes.
    3. Dataset 1 is kept: an equivalence statement, every size's change interval within ±``margin``.
    4. Fine-tuning with the most images beats the ``threshold`` arm on Dataset 2.
    5. No trained model is degenerate (``degenerate_runs``). This claim is about the flagged runs themselves:
       its second verdict is its first.

    Returns:
        One row per claim, columns ``FINDING_COLUMNS``: ``claim``, ``verdict`` (yes, no, undecided or not
        tested) and ``evidence`` with every run; ``verdict_without_flagged`` and ``evidence_without_flagged``
        without the flagged trained runs (the same as the first when none is flagged); ``agrees``, whether the
        two verdicts are the same.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    claims = _claims(tidy, margin, confidence, random_state)
    flagged = flagged_trained_runs(tidy)
    without = _claims(tidy[~tidy["run_id"].isin(flagged)], margin, confidence, random_state) if flagged else claims
    rows = [{**found, "verdict_without_flagged": other["verdict"], "evidence_without_flagged": other["evidence"]}
            for found, other in zip(claims, without)]
    degenerate = _no_degenerate(tidy)
    rows.append({**degenerate, "verdict_without_flagged": degenerate["verdict"],
                 "evidence_without_flagged": degenerate["evidence"]})
    table = pd.DataFrame(rows)
    return table.assign(agrees=table["verdict"] == table["verdict_without_flagged"])[FINDING_COLUMNS]
