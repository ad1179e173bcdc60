"""Tables from the tidy per-image Dice table: mean Dice with hierarchical bootstrap CIs, paired change against the
raw model, and the study's findings decided on those intervals.

**How the intervals are made.** Every repeat of a study is scored on the same test images, so (repeat, image) rows
are not independent: the test images are the unit that varies between studies, and repeats are nested in them.
The interval is a two-stage (hierarchical) percentile bootstrap of the mean (Davison & Hinkley, *Bootstrap
Methods and their Application*, 1997, §3.8; Field & Welsh, "Bootstrapping clustered data", JRSS B 2007):
each resample draws the test images with replacement and then, within each drawn image, its repeats with
replacement. With ``base_per_repeat`` each repeat trains its own base model, so the repeats carry base-training
variance too. Paired changes are differences per (image, repeat) before resampling. The raw model's Dataset 1 −
Dataset 2 gap compares two image sets scored by the same models: repeats are drawn once per resample and shared
by both datasets, images per dataset (a crossed design).
"""

from __future__ import annotations

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
CI_METHOD = "hierarchical percentile bootstrap: test images, then repeats within images (9999 resamples)"
N_RESAMPLES = 9999
#: What a finding says: yes, no, undecided (its interval straddles the bound), or not tested.
YES, NO, UNDECIDED, NOT_TESTED = "yes", "no", "undecided", "not tested"


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = N_RESAMPLES, random_state: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values``, every element one resampling unit (the row bootstrap).

    Returns:
        ``(low, high)``; ``(v, v)`` when all values are equal (no spread to resample).

    Raises:
        ValueError: If ``values`` is empty or not finite, or ``confidence`` is outside (0, 1).
    """
    values = np.asarray(values, dtype=float).ravel()
    _check(values, confidence)
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, random_state=random_state)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _check(values: np.ndarray, confidence: float) -> None:
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need at least one finite value for a confidence interval, got {values.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _nested(table: pd.DataFrame, value: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, max repeats) matrix of ``value`` (NaN-padded) and each image's number of repeats."""
    groups = [part[value].to_numpy(float) for _, part in table.groupby("image", sort=True)]
    lengths = np.array([len(g) for g in groups])
    matrix = np.full((len(groups), lengths.max()), np.nan)
    for i, g in enumerate(groups):
        matrix[i, : len(g)] = g
    return matrix, lengths


def _resampled_means(matrix: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, n: int,
                     repeats: np.ndarray | None = None) -> np.ndarray:
    """``n`` bootstrap means: images with replacement, then repeats within each image with replacement (or, when
    ``repeats`` (n, R) is given, those shared repeat draws for every image: the crossed design)."""
    n_images, width = matrix.shape
    images = rng.integers(0, n_images, size=(n, n_images))
    counts = lengths[images]
    if repeats is None:
        picks = (rng.random((n, n_images, width)) * counts[..., None]).astype(int)
        used = np.arange(width) < counts[..., None]
    else:
        picks = np.broadcast_to(repeats[:, None, :], (n, n_images, repeats.shape[1]))
        used = np.ones(picks.shape, bool)
    values = np.where(used, matrix[images[..., None], picks], 0.0)
    return values.sum(axis=(1, 2)) / used.sum(axis=(1, 2))


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def hierarchical_ci(table: pd.DataFrame, value: str = "dice", confidence: float = 0.95,
                    n_resamples: int = N_RESAMPLES, random_state: int = 0) -> tuple[float, float]:
    """Two-stage percentile bootstrap CI of the mean of ``table[value]``: test images (column ``image``) with
    replacement, then each drawn image's repeats with replacement (see the module docstring).

    Returns:
        ``(low, high)``; ``(v, v)`` when all values are equal.

    Raises:
        ValueError: If there are no finite values or ``confidence`` is outside (0, 1).
    """
    values = table[value].to_numpy(float)
    _check(values, confidence)
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    matrix, lengths = _nested(table, value)
    rng = np.random.default_rng(random_state)
    return _percentiles(_resampled_means(matrix, lengths, rng, n_resamples), confidence)


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


def _ci_table(table: pd.DataFrame, column: str, confidence: float, random_state: int) -> pd.DataFrame:
    rows = []
    for key, part in table.groupby(GROUP, sort=True):
        low, high = hierarchical_ci(part, column, confidence, random_state=random_state)
        rows.append({**dict(zip(GROUP, key)), "mean": part[column].mean(), "std": part[column].std(),
                     "ci_low": low, "ci_high": high, "count": len(part), "images": part["image"].nunique(),
                     "repeats": part["repeat"].nunique(), "ci_method": CI_METHOD})
    return pd.DataFrame(rows).sort_values(GROUP, key=arm_first, ignore_index=True)


def summarize(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean, std and hierarchical bootstrap CI of the per-image Dice for every arm × n_images × dataset.

    Returns:
        Columns ``arm, n_images, dataset, mean, std, ci_low, ci_high, count, images, repeats, ci_method``; std is
        NaN for a single value.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return _ci_table(tidy, "dice", confidence, random_state)


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


def paired_change(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean paired change of Dice against the raw model with a hierarchical bootstrap CI, per arm × n_images ×
    dataset.

    Returns:
        Columns ``arm, n_images, dataset, mean_change, std, ci_low, ci_high, count, images, repeats, ci_method``.

    Raises:
        ValueError: See ``paired_differences``.
    """
    diffs = paired_differences(tidy)
    if diffs.empty:
        raise ValueError("no runs besides the raw model to compare with it")
    return _ci_table(diffs, "change", confidence, random_state).rename(columns={"mean": "mean_change"})


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


def _raw_gap(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    claim = "Raw model: Dataset 2 Dice is below Dataset 1 Dice"
    raw = tidy[tidy["arm"] == RAW_ARM]
    parts = [raw[raw["dataset"] == d] for d in (DATASET1, DATASET2)]
    if any(p.empty for p in parts):
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "no raw-model Dice for both datasets"}
    repeats = sorted(set(parts[0]["repeat"]) & set(parts[1]["repeat"]))
    matrices = [p[p["repeat"].isin(repeats)].pivot(index="image", columns="repeat", values="dice")[repeats].to_numpy()
                for p in parts]
    gap = matrices[0].mean() - matrices[1].mean()
    rng = np.random.default_rng(random_state)
    shared = rng.integers(0, len(repeats), size=(N_RESAMPLES, len(repeats)))
    full = [np.full(m.shape[0], m.shape[1]) for m in matrices]
    draws = [_resampled_means(m, n, rng, N_RESAMPLES, shared) for m, n in zip(matrices, full)]
    low, high = _percentiles(draws[0] - draws[1], confidence)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"Dataset 1 − Dataset 2, paired per repeat: {_fmt(gap, low, high)} "
                        f"({len(repeats)} raw model(s)); yes when the interval lies above 0"}


def _trend(ft: pd.DataFrame) -> str:
    """Page's L test (Page 1963) for Dice increasing with the number of images; blocks are (repeat, image)."""
    blocks = ft.pivot_table(index=["repeat", "image"], columns="n_images", values="dice").dropna()
    if blocks.shape[1] < 3 or len(blocks) < 2:
        return "trend across sizes: needs 3 or more sizes"
    result = stats.page_trend_test(blocks.to_numpy())
    sizes = " < ".join(str(n) for n in blocks.columns)
    return (f"Page's L test for Dice increasing over n = {sizes} ({len(blocks)} repeat × image blocks): "
            f"L = {result.statistic:.0f}, p = {result.pvalue:.2g} "
            f"({'an increasing trend' if result.pvalue < 0.05 else 'no significant trend'} at 5 %)")


def _size_gain(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    ft = tidy[(tidy["arm"] == FINETUNE_ARM) & (tidy["dataset"] == DATASET2)]
    sizes = sorted(ft["n_images"].unique())
    claim = "Fine-tuning: Dataset 2 Dice with the most images exceeds Dice with the fewest"
    if len(sizes) < 2:
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": f"needs finetune runs at two sizes, found {sizes}"}
    small, large = (ft[ft["n_images"] == n].set_index(["repeat", "image"])["dice"] for n in (sizes[0], sizes[-1]))
    diff = (large - small).dropna().rename("diff").reset_index()
    if diff.empty:
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "no (repeat, image) pair evaluated at both sizes"}
    low, high = hierarchical_ci(diff, "diff", confidence, random_state=random_state)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"n={sizes[-1]} minus n={sizes[0]}, paired per (repeat, image): "
                        f"{_fmt(diff['diff'].mean(), low, high)}; yes when the interval lies above 0. {_trend(ft)}"}


def _forgetting(tidy: pd.DataFrame, margin: float, confidence: float, random_state: int) -> dict[str, object]:
    claim = f"Fine-tuning keeps Dataset 1: the change against the raw model lies within ±{margin:g} at every size"
    subset = tidy[(tidy["arm"].isin([RAW_ARM, FINETUNE_ARM])) & (tidy["dataset"] == DATASET1)]
    if not (subset["arm"] == FINETUNE_ARM).any() or not (subset["arm"] == RAW_ARM).any():
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "needs raw and finetune Dataset 1 Dice"}
    change = paired_change(subset, confidence, random_state)
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


def _beats_threshold(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    claim = "Fine-tuning with the most images beats Otsu's threshold (no training) on Dataset 2"
    ft = tidy[(tidy["arm"] == FINETUNE_ARM) & (tidy["dataset"] == DATASET2)]
    baseline = tidy[(tidy["arm"] == THRESHOLD_ARM) & (tidy["dataset"] == DATASET2)].set_index("image")["dice"]
    if ft.empty or baseline.empty:
        return {"claim": claim, "verdict": NOT_TESTED, "evidence": "needs finetune and threshold runs"}
    largest = ft[ft["n_images"] == ft["n_images"].max()]
    diff = largest.assign(diff=largest["dice"] - largest["image"].map(baseline)).dropna(subset=["diff"])
    low, high = hierarchical_ci(diff, "diff", confidence, random_state=random_state)
    return {"claim": claim, "verdict": above_zero(low, high),
            "evidence": f"n={largest['n_images'].iloc[0]} minus threshold, paired per test image: "
                        f"{_fmt(diff['diff'].mean(), low, high)} (threshold alone: {baseline.mean():.3f}); "
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


def findings(
    tidy: pd.DataFrame, margin: float = FORGETTING_MARGIN, confidence: float = 0.95, random_state: int = 0
) -> pd.DataFrame:
    """Check the study's claims, each decided on an interval (module docstring) and answered yes, no or undecided.

    1. The raw model does worse on Dataset 2: the interval of its Dataset 1 − Dataset 2 gap lies above 0.
    2. More images help: the interval of Dice(n_max) − Dice(n_min) on Dataset 2, paired per (repeat, image),
       lies above 0; Page's L test states whether Dice rises monotonically across all sizes.
    3. Dataset 1 is kept: an equivalence statement, every size's change interval within ±``margin``.
    4. Fine-tuning with the most images beats the ``threshold`` arm on Dataset 2.
    5. No trained model is degenerate (``degenerate_runs``).

    Returns:
        One row per claim: ``claim``, ``verdict`` (yes, no, undecided or not tested), ``evidence``.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return pd.DataFrame([_raw_gap(tidy, confidence, random_state), _size_gain(tidy, confidence, random_state),
                         _forgetting(tidy, margin, confidence, random_state),
                         _beats_threshold(tidy, confidence, random_state), _no_degenerate(tidy)])
