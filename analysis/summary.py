"""Tables from the tidy per-image Dice table: mean Dice with bootstrap CIs, paired change against the raw model,
and the study's three claims checked against them.

Confidence intervals are percentile bootstrap intervals of the mean (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13) computed by ``scipy.stats.bootstrap``; the resampling unit is one row of the tidy table,
i.e. one (repeat, test image) pair, so the interval reflects both test-image and repeat variability.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.query import RAW_ARM, TIDY_COLUMNS
from segft import quality

DATASET1 = "dataset1"
DATASET2 = "dataset2"
#: The largest |mean Dataset 1 change| after fine-tuning that still counts as "no forgetting".
FORGETTING_TOLERANCE = 0.05
GROUP = ["arm", "n_images", "dataset"]
THRESHOLD_ARM = "threshold"
#: Arms that train a model on Dataset 2 images.
TRAINED_ARMS = ("finetune", "scratch", "joint")


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 9999, random_state: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    Args:
        values: 1-D sample; every element is one resampling unit.
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap resamples.
        random_state: Seed, so that the same data always give the same interval.

    Returns:
        ``(low, high)``; ``(v, v)`` when there is one value or all are equal (no spread to resample).

    Raises:
        ValueError: If ``values`` is empty or not finite, or ``confidence`` is outside (0, 1).
    """
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"need at least one finite value for a confidence interval, got {values.tolist()}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                             method="percentile", vectorized=True, random_state=random_state)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


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


def _describe(values: pd.Series, confidence: float, random_state: int) -> pd.Series:
    low, high = bootstrap_ci(values.to_numpy(), confidence, random_state=random_state)
    return pd.Series({"mean": values.mean(), "std": values.std(), "ci_low": low, "ci_high": high,
                      "count": len(values)})


def _ci_table(table: pd.DataFrame, column: str, confidence: float, random_state: int) -> pd.DataFrame:
    out = table.groupby(GROUP)[column].apply(_describe, confidence=confidence, random_state=random_state)
    out = out.unstack().reset_index()
    return out.astype({"count": int}).sort_values(GROUP, key=arm_first, ignore_index=True)


def summarize(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean, std, bootstrap CI and count of the per-image Dice for every arm × n_images × dataset.

    Returns:
        Columns ``arm, n_images, dataset, mean, std, ci_low, ci_high, count``; std is NaN for a single value.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return _ci_table(tidy, "dice", confidence, random_state)


def paired_differences(tidy: pd.DataFrame) -> pd.DataFrame:
    """Every non-raw row with the raw model's Dice on the same test image and ``change = dice - raw_dice``.

    The pairing is per test image: each (arm, n_images, repeat, dataset, image) is compared with the raw
    model on that image, which removes the image-to-image difficulty from the comparison.

    Raises:
        ValueError: If the table has no raw rows, several raw rows per image, or images the raw model lacks.
    """
    check_tidy(tidy)
    raw = tidy[tidy["arm"] == RAW_ARM][["dataset", "image", "dice"]]
    if raw.empty:
        raise ValueError(f"no {RAW_ARM!r} rows: paired change needs the raw model's per-image Dice")
    if raw.duplicated(["dataset", "image"]).any():
        raise ValueError("the raw model has several rows for one test image; expected exactly one raw run")
    others = tidy[tidy["arm"] != RAW_ARM]
    paired = others.merge(raw, on=["dataset", "image"], how="left", suffixes=("", "_raw"), validate="many_to_one")
    unmatched = paired[paired["dice_raw"].isna()]
    if not unmatched.empty:
        first = unmatched.iloc[0]
        raise ValueError(f"the raw model has no Dice for {first['dataset']}/{first['image']}")
    return paired.rename(columns={"dice_raw": "raw_dice"}).assign(change=lambda t: t["dice"] - t["raw_dice"])


def paired_change(tidy: pd.DataFrame, confidence: float = 0.95, random_state: int = 0) -> pd.DataFrame:
    """Mean paired change of Dice against the raw model with a bootstrap CI, per arm × n_images × dataset.

    Returns:
        Columns ``arm, n_images, dataset, mean_change, std, ci_low, ci_high, count`` (count = pairs).

    Raises:
        ValueError: See ``paired_differences``.
    """
    diffs = paired_differences(tidy)
    if diffs.empty:
        raise ValueError("no runs besides the raw model to compare with it")
    return _ci_table(diffs, "change", confidence, random_state).rename(columns={"mean": "mean_change"})


def _fmt(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _raw_gap(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    claim = "Raw model: Dataset 2 Dice is below Dataset 1 Dice"
    raw = tidy[tidy["arm"] == RAW_ARM]
    values = {d: raw.loc[raw["dataset"] == d, "dice"].to_numpy() for d in (DATASET1, DATASET2)}
    if any(v.size == 0 for v in values.values()):
        return {"claim": claim, "holds": None, "evidence": "no raw-model Dice for both datasets"}
    cis = {d: (v.mean(), *bootstrap_ci(v, confidence, random_state=random_state)) for d, v in values.items()}
    return {"claim": claim, "holds": bool(cis[DATASET2][0] < cis[DATASET1][0]),
            "evidence": f"Dataset 1 {_fmt(*cis[DATASET1])}, Dataset 2 {_fmt(*cis[DATASET2])}"}


def _size_gain(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    ft = tidy[(tidy["arm"] == "finetune") & (tidy["dataset"] == DATASET2)]
    sizes = sorted(ft["n_images"].unique())
    claim = "Fine-tuning: Dataset 2 Dice with the most images exceeds Dice with the fewest"
    if len(sizes) < 2:
        return {"claim": claim, "holds": None, "evidence": f"needs finetune runs at two sizes, found {sizes}"}
    small, large = (ft[ft["n_images"] == n].set_index(["repeat", "image"])["dice"] for n in (sizes[0], sizes[-1]))
    diff = (large - small).dropna().to_numpy()
    if diff.size == 0:
        return {"claim": claim, "holds": None, "evidence": "no (repeat, image) pair evaluated at both sizes"}
    low, high = bootstrap_ci(diff, confidence, random_state=random_state)
    return {"claim": claim, "holds": bool(low > 0),
            "evidence": f"n={sizes[-1]} minus n={sizes[0]}, paired per (repeat, image): {_fmt(diff.mean(), low, high)}"
                        f"; holds when the CI lies above 0"}


def _forgetting(tidy: pd.DataFrame, tolerance: float, confidence: float, random_state: int) -> dict[str, object]:
    claim = f"Fine-tuning: Dataset 1 Dice stays within {tolerance} of the raw model at every size"
    subset = tidy[(tidy["arm"].isin([RAW_ARM, "finetune"])) & (tidy["dataset"] == DATASET1)]
    if not (subset["arm"] == "finetune").any() or not (subset["arm"] == RAW_ARM).any():
        return {"claim": claim, "holds": None, "evidence": "needs raw and finetune Dataset 1 Dice"}
    change = paired_change(subset, confidence, random_state)
    parts = [f"n={row.n_images}: {_fmt(row.mean_change, row.ci_low, row.ci_high)}" for row in change.itertuples()]
    exceeded = change.loc[change["mean_change"].abs() > tolerance, "n_images"].tolist()
    note = f"; |mean change| > {tolerance} at n = {exceeded}" if exceeded else ""
    return {"claim": claim, "holds": not exceeded, "evidence": "mean change " + ", ".join(parts) + note}


def degenerate_runs(tidy: pd.DataFrame) -> pd.DataFrame:
    """The runs whose test masks are degenerate (``segft.quality.flag_runs``): predicted foreground over 3x or
    under 1/3 of the truth on a dataset's test images, or the same masks as another size of the same arm and
    repeat. Empty when the tidy table has no pixel counts (runs logged before segft recorded them)."""
    if not {"tp", "fp", "fn"} <= set(tidy.columns):
        return quality.flag_runs(pd.DataFrame())
    return quality.flag_runs(tidy)


def _beats_threshold(tidy: pd.DataFrame, confidence: float, random_state: int) -> dict[str, object]:
    claim = "Fine-tuning with the most images beats Otsu's threshold (no training) on Dataset 2"
    ft = tidy[(tidy["arm"] == "finetune") & (tidy["dataset"] == DATASET2)]
    baseline = tidy[(tidy["arm"] == THRESHOLD_ARM) & (tidy["dataset"] == DATASET2)].set_index("image")["dice"]
    if ft.empty or baseline.empty:
        return {"claim": claim, "holds": None, "evidence": "needs finetune and threshold runs"}
    largest = ft[ft["n_images"] == ft["n_images"].max()]
    diff = (largest["dice"] - largest["image"].map(baseline)).dropna().to_numpy()
    low, high = bootstrap_ci(diff, confidence, random_state=random_state)
    return {"claim": claim, "holds": bool(low > 0),
            "evidence": f"n={largest['n_images'].iloc[0]} minus threshold, paired per test image: "
                        f"{_fmt(diff.mean(), low, high)} (threshold alone: {baseline.mean():.3f}); "
                        "holds when the CI lies above 0"}


def _no_degenerate(tidy: pd.DataFrame) -> dict[str, object]:
    claim = "Every trained model gives plausible masks (none collapsed to all or no foreground, none stuck)"
    if not {"tp", "fp", "fn"} <= set(tidy.columns):
        return {"claim": claim, "holds": None, "evidence": "the runs did not log pixel counts"}
    flagged = degenerate_runs(tidy)
    flagged = flagged[flagged["arm"].isin(TRAINED_ARMS)]
    if flagged.empty:
        return {"claim": claim, "holds": True, "evidence": "predicted foreground within 1/3 to 3x of the truth on "
                "every test set, and different masks at every size"}
    parts = [f"{r.arm} n={r.n_images} repeat {r.repeat} {r.reason}" for r in flagged.itertuples()]
    return {"claim": claim, "holds": False, "evidence": f"{flagged['run_id'].nunique()} run(s) flagged: "
            + " | ".join(parts)}


def findings(
    tidy: pd.DataFrame, tolerance: float = FORGETTING_TOLERANCE, confidence: float = 0.95, random_state: int = 0
) -> pd.DataFrame:
    """Check the study's three claims.

    1. The raw model's mean Dataset 2 Dice is below its mean Dataset 1 Dice (domain shift hurts).
    2. Fine-tuning helps more with more images: the paired difference Dice(n_max) − Dice(n_min) on Dataset 2,
       paired per (repeat, test image), has a bootstrap CI entirely above 0. The paired CI is used rather than
       non-overlapping marginal CIs because sizes are nested within a repeat and share the test images, so the
       pairing removes image difficulty and repeat draws; non-overlap of marginal CIs would be needlessly strict.
    3. Fine-tuning does not forget Dataset 1: |mean paired change vs raw| ≤ ``tolerance`` at every size.
    4. Fine-tuning with the most images beats the ``threshold`` arm on Dataset 2 (paired CI above 0).
    5. No trained model is degenerate (``degenerate_runs``).

    Returns:
        One row per claim: ``claim``, ``holds`` (True, False, or None when the study cannot test it), ``evidence``.

    Raises:
        ValueError: If ``tidy`` is not a valid tidy table.
    """
    check_tidy(tidy)
    return pd.DataFrame([_raw_gap(tidy, confidence, random_state), _size_gain(tidy, confidence, random_state),
                         _forgetting(tidy, tolerance, confidence, random_state),
                         _beats_threshold(tidy, confidence, random_state), _no_degenerate(tidy)])
