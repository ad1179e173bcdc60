"""The analysis package: bootstrap and paired tables on hand-made data, figures, the grid, and a full report
built from a fake study logged into a temporary MLflow store."""

from __future__ import annotations

import warnings
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import stats

from analysis import curve, figures, grid, query, summary
from analysis import report as report_module
from analysis.report import Champion, Report, build_report, text_summary
from segft import schema
from segft.config import ReportConfig


def make_tidy(raw: dict[str, list[float]], runs: dict[tuple[str, int, str], list[list[float]]]) -> pd.DataFrame:
    """Tidy table from ``raw[dataset] = [dice per image]``, ``runs[(arm, n, dataset)] = [[per image] per repeat]``."""
    rows = [{"run_id": "raw", "arm": "raw", "n_images": 0, "repeat": 0, "dataset": d, "image": f"{i:03d}", "dice": v}
            for d, values in raw.items() for i, v in enumerate(values)]
    for (arm, n, dataset), repeats in runs.items():
        for r, values in enumerate(repeats):
            rows += [{"run_id": f"{arm}-{n}-{r}", "arm": arm, "n_images": n, "repeat": r, "dataset": dataset,
                      "image": f"{i:03d}", "dice": v} for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=query.TIDY_COLUMNS)


# ---- bootstrap and summary ----

def one_cell(per_repeat: list[list[float]]) -> pd.DataFrame:
    """One cell's rows: ``per_repeat[r][i]`` is the Dice of test image i in repeat r."""
    return pd.DataFrame([{"repeat": r, "image": f"{i:03d}", "dice": v}
                         for r, values in enumerate(per_repeat) for i, v in enumerate(values)])


@pytest.mark.parametrize("per_repeat", [[[0.1, 0.5, 0.7, 0.2]], [[0.9, 0.95], [0.8, 0.9]],
                                        [[0.0, 1.0, 0.5], [0.5, 0.25, 0.75], [0.3, 0.3, 0.4]]])
def test_crossed_ci_contains_mean_and_is_reproducible(per_repeat):
    cell = one_cell(per_repeat)
    low, high = summary.crossed_ci(cell)
    assert low <= cell["dice"].mean() <= high and low < high
    assert summary.crossed_ci(cell) == (low, high)


@pytest.mark.parametrize("per_repeat, expected", [
    ([[0.7]], (0.7, 0.7)), ([[0.3, 0.3, 0.3]], (0.3, 0.3)), ([[0.0] * 5] * 3, (0.0, 0.0)),
])
def test_crossed_ci_degenerate_is_the_value_without_warnings(per_repeat, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summary.crossed_ci(one_cell(per_repeat)) == expected


@pytest.mark.parametrize("per_repeat, confidence, message", [
    ([], 0.95, "at least one finite"), ([[0.1, np.nan]], 0.95, "at least one finite"),
    ([[0.1, 0.2]], 1.5, "confidence"),
])
def test_crossed_ci_rejects_bad_input(per_repeat, confidence, message):
    cell = one_cell(per_repeat) if per_repeat else pd.DataFrame(columns=["repeat", "image", "dice"])
    with pytest.raises(ValueError, match=message):
        summary.crossed_ci(cell, confidence=confidence)


def test_intervals_never_leave_the_range_dice_and_its_changes_can_take():
    """Few repeats widen the interval (t instead of z): a Dice near 1 would get a bound above 1 unclipped."""
    near_one = {("finetune", 5, "dataset2"): [[1.0, 0.99, 0.97], [0.6, 0.98, 0.99], [1.0, 1.0, 0.95]]}
    tidy = make_tidy({"dataset2": [0.1, 0.0, 0.05]}, near_one)
    cell = tidy[tidy["arm"] == "finetune"]
    unclipped = summary.Resamples.draw(cell).interval([(1.0, *summary.Resamples.draw(cell).matrix(cell, "dice"))],
                                                      0.95)
    assert unclipped[2] > 1  # the case clipping exists for: not vacuous
    row = summary.summarize(tidy).set_index("arm").loc["finetune"]
    assert 0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] == 1.0
    change = summary.paired_change(tidy).iloc[0]
    assert -1 <= change["ci_low"] <= change["ci_high"] <= 1


def test_summarize_groups_arm_size_dataset():
    tidy = make_tidy({"dataset1": [0.8, 0.6], "dataset2": [0.4, 0.4]},
                     {("finetune", 5, "dataset2"): [[0.5, 0.7], [0.6, 0.8]]})
    table = summary.summarize(tidy).set_index(["arm", "n_images", "dataset"])
    row = table.loc[("finetune", 5, "dataset2")]
    assert row["count"] == 4 and row["mean"] == pytest.approx(0.65)
    assert row["std"] == pytest.approx(np.std([0.5, 0.7, 0.6, 0.8], ddof=1))
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert (table.loc[("raw", 0, "dataset2"), ["ci_low", "ci_high"]] == 0.4).all()


@pytest.mark.parametrize("tidy, message", [
    (pd.DataFrame(columns=query.TIDY_COLUMNS), "empty"),
    (pd.DataFrame({"arm": ["raw"], "dice": [0.5]}), "lacks columns"),
])
def test_summarize_rejects_bad_tables(tidy, message):
    with pytest.raises(ValueError, match=message):
        summary.summarize(tidy)


def test_paired_change_by_hand():
    # raw: a=0.8, b=0.6; finetune n=5 r0: a=0.7, b=0.65; r1: a=0.75, b=0.5 -> changes -0.1, 0.05, -0.05, -0.1.
    tidy = make_tidy({"dataset1": [0.8, 0.6]}, {("finetune", 5, "dataset1"): [[0.7, 0.65], [0.75, 0.5]]})
    diffs = summary.paired_differences(tidy).sort_values(["repeat", "image"])
    assert diffs["change"].tolist() == pytest.approx([-0.1, 0.05, -0.05, -0.1])
    change = summary.paired_change(tidy)
    assert len(change) == 1
    row = change.iloc[0]
    assert row["mean_change"] == pytest.approx(-0.05) and row["count"] == 4
    assert row["ci_low"] <= row["mean_change"] <= row["ci_high"]


@pytest.mark.parametrize("raw, message", [
    ({}, "no 'raw' rows"),
    ({"dataset1": [0.8]}, "no Dice for dataset1/001"),
])
def test_paired_change_needs_the_raw_model_on_every_image(raw, message):
    tidy = make_tidy(raw, {("finetune", 5, "dataset1"): [[0.7, 0.65]]})
    with pytest.raises(ValueError, match=message):
        summary.paired_change(tidy)


def test_paired_change_rejects_two_raw_runs():
    tidy = make_tidy({"dataset1": [0.8, 0.6]}, {("finetune", 5, "dataset1"): [[0.7, 0.65]]})
    with pytest.raises(ValueError, match="one raw run per repeat"):
        summary.paired_change(pd.concat([tidy, tidy[tidy["arm"] == "raw"]]))


# ---- findings ----

def _study(raw1=0.8, raw2=0.4, ft_small=0.5, ft_large=0.8, ft1=(-0.01, -0.02), sizes=(5, 20)) -> pd.DataFrame:
    """Two images, three repeats; Dataset 2 finetune Dice per size and Dataset 1 change from raw per size."""
    runs = {}
    for n, d2 in zip(sizes, (ft_small, ft_large)):
        runs[("finetune", n, "dataset2")] = [[d2, d2 + 0.02], [d2 + 0.01, d2 + 0.03], [d2 + 0.005, d2 + 0.025]]
    for n, change in zip(sizes, ft1):
        d1 = raw1 + change
        runs[("finetune", n, "dataset1")] = [[d1, d1 + 0.02], [d1 + 0.01, d1 + 0.03], [d1 + 0.005, d1 + 0.025]]
    return make_tidy({"dataset1": [raw1, raw1 + 0.02], "dataset2": [raw2, raw2 + 0.02]}, runs)


def test_findings_on_the_default_study_table():
    found = summary.findings(_study())
    assert len(found) == 5
    # no threshold run and no pixel counts in this table: the last two claims cannot be tested
    assert found["verdict"].tolist() == ["yes", "yes", "yes", "not tested", "not tested"]


def rows(arm: str, n: int, dataset: str, per_repeat: list[list[float]], run: str | None = None) -> list[dict]:
    """Tidy rows of one arm and size: ``per_repeat[r][i]`` is the Dice of test image i in repeat r."""
    return [{"run_id": run or f"{arm}-{n}-{r}", "arm": arm, "n_images": n, "repeat": r, "dataset": dataset,
             "image": f"{i:03d}", "dice": v} for r, values in enumerate(per_repeat) for i, v in enumerate(values)]


def table(*parts: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for part in parts for row in part], columns=query.TIDY_COLUMNS)


RAW = rows("raw", 0, "dataset1", [[0.8, 0.82]], "raw") + rows("raw", 0, "dataset2", [[0.4, 0.42]], "raw")
FT_D2 = rows("finetune", 5, "dataset2", [[0.5, 0.52], [0.51, 0.53]]) + rows("finetune", 20, "dataset2", [[0.8, 0.82], [0.81, 0.83]])


def with_d1_change(changes: list[list[float]]) -> list[dict]:
    """finetune n=5 Dataset 1 rows whose change against RAW's Dataset 1 Dice is ``changes[r][i]``."""
    return rows("finetune", 5, "dataset1", [[raw + c for raw, c in zip((0.8, 0.82), cs)] for cs in changes])


def threshold(values: list[float]) -> list[dict]:
    return rows("threshold", 0, "dataset2", [values], "threshold")


VERDICT_CASES = [  # name, claim index, tidy table, expected verdict
    ("gap: yes", 0, table(RAW), "yes"),
    ("gap: no", 0, table(rows("raw", 0, "dataset1", [[0.4, 0.42]], "raw"),
                         rows("raw", 0, "dataset2", [[0.8, 0.82]], "raw")), "no"),
    ("gap: undecided", 0, table(rows("raw", 0, "dataset1", [[0.5, 0.9]], "raw"),
                                rows("raw", 0, "dataset2", [[0.6, 0.65]], "raw")), "undecided"),
    ("gap: not tested", 0, table(rows("raw", 0, "dataset1", [[0.5, 0.9]], "raw")), "not tested"),
    ("size gain: yes", 1, table(RAW, FT_D2), "yes"),
    ("size gain: no", 1, table(RAW, rows("finetune", 5, "dataset2", [[0.8, 0.82], [0.81, 0.83]]),
                               rows("finetune", 20, "dataset2", [[0.5, 0.52], [0.51, 0.53]])), "no"),
    ("size gain: undecided", 1, table(RAW, rows("finetune", 5, "dataset2", [[0.5, 0.5], [0.5, 0.5]]),
                                      rows("finetune", 20, "dataset2", [[0.7, 0.3], [0.6, 0.4]])), "undecided"),
    ("size gain: one size", 1, table(RAW, FT_D2[:4]), "not tested"),
    ("kept: yes", 2, table(RAW, FT_D2, with_d1_change([[-0.01, -0.012], [-0.011, -0.009]])), "yes"),
    ("kept: no", 2, table(RAW, FT_D2, with_d1_change([[-0.2, -0.21], [-0.19, -0.2]])), "no"),
    ("kept: undecided", 2, table(RAW, FT_D2, with_d1_change([[-0.1, 0.0], [-0.08, 0.01]])), "undecided"),
    ("beats threshold: yes", 3, table(RAW, FT_D2, threshold([0.5, 0.5])), "yes"),
    ("beats threshold: no", 3, table(RAW, FT_D2, threshold([0.95, 0.95])), "no"),
    ("beats threshold: undecided", 3, table(RAW, FT_D2, threshold([0.4, 1.0])), "undecided"),
]


@pytest.mark.parametrize("name, claim, tidy, verdict", VERDICT_CASES, ids=[case[0] for case in VERDICT_CASES])
def test_finding_verdicts(name, claim, tidy, verdict):
    assert summary.findings(tidy)["verdict"].iloc[claim] == verdict


def test_forgetting_margin_is_the_study_parameter():
    tidy = table(RAW, FT_D2, with_d1_change([[-0.07, -0.072], [-0.071, -0.069]]))
    assert summary.findings(tidy)["verdict"].iloc[2] == "no"
    found = summary.findings(tidy, margin=0.1)
    assert found["verdict"].iloc[2] == "yes" and "±0.1" in found["claim"].iloc[2]


def test_size_gain_states_the_trend_test_on_one_block_per_test_image():
    """Repeats are crossed with images, so (repeat, image) blocks are not independent: Page's blocks are the test
    images, each with its mean Dice over the repeats at every size."""
    sizes = {5: [[0.5, 0.3, 0.4], [0.52, 0.33, 0.45]], 10: [[0.6, 0.35, 0.5], [0.61, 0.4, 0.52]],
             20: [[0.8, 0.5, 0.55], [0.81, 0.45, 0.6]]}
    tidy = table(RAW, *[rows("finetune", n, "dataset2", values) for n, values in sizes.items()])
    evidence = summary.findings(tidy)["evidence"].iloc[1]
    blocks = np.mean([values for values in sizes.values()], axis=1).T  # (images, sizes)
    page = stats.page_trend_test(blocks)
    assert f"(3 test images, each its mean over the repeats): L = {page.statistic:.0f}" in evidence
    assert f"p = {page.pvalue:.2g}" in evidence and "an increasing trend" in evidence


# ---- crossed intervals (their coverage: tests/test_intervals.py) ----

def crossed_table(image_sd: float, repeat_sd: float, images: int = 8, repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """One cell, y[r, i] = 0.6 + a_r + b_i, and nothing else."""
    rng = np.random.default_rng(seed)
    image, repeat = rng.normal(0, image_sd, images), rng.normal(0, repeat_sd, repeats)
    return pd.DataFrame([{"image": f"{i:03d}", "repeat": r, "dice": 0.6 + image[i] + repeat[r]}
                         for i in range(images) for r in range(repeats)])


def test_crossed_interval_counts_images_not_rows():
    """With images that differ (sd 0.15) and repeats that do not, the 24 rows carry only 8 images' worth of
    information: the interval is about the t interval of the 8 image means, not the sqrt(3) narrower one of rows."""
    tidy = crossed_table(image_sd=0.15, repeat_sd=0.0)
    low, high = summary.crossed_ci(tidy)
    image_means = tidy.groupby("image")["dice"].mean()
    t_low, t_high = stats.t.interval(0.95, len(image_means) - 1, image_means.mean(), stats.sem(image_means))
    assert 0.85 < (high - low) / (t_high - t_low) < 1.25
    assert low <= tidy["dice"].mean() <= high


def test_crossed_interval_keeps_the_repeat_spread():
    """Repeats that differ (sd 0.1) and images that do not: every image shares its repeat's offset, so the interval
    is about the t interval of the 3 repeat means. Redrawing repeats within each of the 8 images would average that
    spread away (about sqrt(8) narrower)."""
    tidy = crossed_table(image_sd=0.0, repeat_sd=0.1)
    low, high = summary.crossed_ci(tidy)
    repeat_means = tidy.groupby("repeat")["dice"].mean()
    t_low, t_high = stats.t.interval(0.95, len(repeat_means) - 1, repeat_means.mean(), stats.sem(repeat_means))
    assert 0.6 < (high - low) / (t_high - t_low) < 1.25


def test_one_repeat_is_the_image_bootstrap():
    """Three identical repeats carry no repeat spread: the interval is exactly that of one repeat (images draw
    from their own stream, whatever the number of repeats)."""
    one = crossed_table(image_sd=0.1, repeat_sd=0.0, repeats=1)
    same = pd.concat([one.assign(repeat=r) for r in range(3)], ignore_index=True)
    assert summary.crossed_ci(same) == pytest.approx(summary.crossed_ci(one), abs=1e-12)


def test_a_single_repeat_cell_is_constant_over_the_drawn_repeats():
    plan = summary.Resamples.draw(table(rows("finetune", 5, "dataset2", [[0.5, 0.6], [0.7, 0.8], [0.6, 0.7]]),
                                        threshold([0.3, 0.4])))
    dataset, matrix = plan.matrix(pd.DataFrame(threshold([0.3, 0.4])), "dice")
    assert dataset == "dataset2" and matrix.tolist() == [[0.3, 0.4]] * 3
    _, partial = plan.matrix(pd.DataFrame(rows("finetune", 5, "dataset2", [[0.5, 0.6], [0.7, 0.8]])), "dice")
    assert np.isnan(partial[2]).all() and partial[:2].tolist() == [[0.5, 0.6], [0.7, 0.8]]


def test_resamples_draw_repeats_once_and_each_datasets_images_once():
    tidy = _study()
    plan = summary.Resamples.draw(tidy, n_resamples=500, random_state=3)
    assert list(plan.repeats) == [0, 1, 2] and sorted(plan.images) == ["dataset1", "dataset2"]
    assert plan.repeat_weights.shape == (500, 3) and plan.image_weights["dataset1"].shape == (500, 2)
    for weights in (plan.repeat_weights, *plan.image_weights.values()):
        assert np.allclose(weights.sum(axis=1), 1) and np.allclose(weights * weights.shape[1] % 1, 0)
    assert not np.array_equal(plan.image_weights["dataset1"], plan.image_weights["dataset2"])
    again = summary.Resamples.draw(tidy, n_resamples=500, random_state=3)
    assert np.array_equal(again.repeat_weights, plan.repeat_weights)


def test_every_cell_is_resampled_on_the_same_draws():
    """An arm that scores exactly 0.1 above another on every (repeat, image) has its interval exactly 0.1 higher:
    both cells see the same repeats and images in every resample."""
    base = [[0.5, 0.7, 0.6], [0.65, 0.8, 0.55], [0.4, 0.6, 0.5]]
    tidy = table(rows("raw", 0, "dataset2", [[0.4, 0.5, 0.45]], "raw"), rows("finetune", 5, "dataset2", base),
                 rows("scratch", 5, "dataset2", [[v + 0.1 for v in values] for values in base]))
    cells = summary.summarize(tidy).set_index("arm")
    shift = cells.loc["scratch", ["mean", "ci_low", "ci_high"]] - cells.loc["finetune", ["mean", "ci_low", "ci_high"]]
    assert shift.tolist() == pytest.approx([0.1, 0.1, 0.1], abs=1e-9)
    assert cells.loc["finetune", "ci_high"] - cells.loc["finetune", "ci_low"] > 0.05


def test_raw_gap_shares_the_repeat_draws_of_both_datasets():
    """Three base models (base_per_repeat) that differ by 0.1 on both datasets alike, images alike: the gap is 0.3
    in every resample. Drawing the repeats apart for each dataset would give it a wide interval."""
    offsets = (0.0, 0.1, -0.1)
    raw = table(*[rows("raw", 0, d, [[level + o] * 3 for o in offsets]) for d, level in (("dataset1", 0.8),
                                                                                        ("dataset2", 0.5))])
    assert "0.300 [0.300, 0.300] (3 raw model(s))" in summary.findings(raw)["evidence"].iloc[0]


def test_summary_says_how_its_intervals_were_made():
    table_ = summary.summarize(_study())
    assert (table_["ci_method"] == summary.CI_METHOD).all() and "crossed" in summary.CI_METHOD
    assert {"images", "repeats"} <= set(table_.columns)


def test_a_missing_run_leaves_a_finite_interval():
    """A repeat that failed at one size: that cell has two of the study's three repeats."""
    tidy = _study()
    tidy = tidy[~((tidy["run_id"] == "finetune-20-2"))]
    cell = summary.summarize(tidy).set_index(["arm", "n_images", "dataset"]).loc[("finetune", 20, "dataset2")]
    assert cell["repeats"] == 2 and np.isfinite([cell["ci_low"], cell["ci_high"]]).all()
    assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]


def test_change_is_paired_per_repeat_when_the_raw_model_has_repeats():
    tidy = table(rows("raw", 0, "dataset1", [[0.8, 0.8], [0.6, 0.6]], "raw"),
                 rows("finetune", 5, "dataset1", [[0.7, 0.7], [0.7, 0.7]]))
    tidy.loc[tidy["arm"] == "raw", "run_id"] = tidy["repeat"].map({0: "raw-0", 1: "raw-1"})
    diffs = summary.paired_differences(tidy).sort_values(["repeat", "image"])
    assert diffs["change"].round(6).tolist() == [-0.1, -0.1, 0.1, 0.1]


def _with_counts(tidy: pd.DataFrame, ratio_of: dict[str, float]) -> pd.DataFrame:
    """Give every row pixel counts (100 true pixels, predicted = ratio x 100) and a digest unique to its run."""
    ratio = tidy["run_id"].map(lambda run: ratio_of.get(run, 1.0))
    return tidy.assign(tp=100, fp=((ratio - 1).clip(lower=0) * 100).astype(int),
                       fn=((1 - ratio).clip(lower=0) * 100).astype(int),
                       prediction_digest=tidy["run_id"] + tidy["image"])


@pytest.mark.parametrize("ratio_of, verdict", [({}, "yes"), ({"finetune-20-1": 5.0}, "no"), ({"raw": 5.0}, "yes")])
def test_degenerate_finding_counts_trained_runs_only(ratio_of, verdict):
    """A raw model that over-segments shows the domain shift; only a trained one that does is a failure."""
    found = summary.findings(_with_counts(_study(), ratio_of))
    assert found["verdict"].iloc[4] == verdict
    if verdict == "no":
        assert "finetune n=20 repeat 1 marks 5.0x" in found["evidence"].iloc[4]
    assert summary.degenerate_runs(_with_counts(_study(), ratio_of))["run_id"].nunique() == len(ratio_of)


def _flag_dataset2(tidy: pd.DataFrame, runs: set[str]) -> pd.DataFrame:
    """Pixel counts for every row; ``runs`` mark 5x the true foreground on Dataset 2 only."""
    counted = _with_counts(tidy, {})
    over = counted["run_id"].isin(runs) & (counted["dataset"] == "dataset2")
    return counted.assign(fp=counted["fp"].mask(over, 400))


def test_findings_give_each_verdict_without_the_flagged_runs_too():
    """All three n=20 runs are flagged (on Dataset 2 only): without them the size gain cannot be tested, and their
    Dataset 1 rows go too."""
    tidy = _flag_dataset2(_study(), {"finetune-20-0", "finetune-20-1", "finetune-20-2"})
    assert summary.flagged_trained_runs(tidy) == ["finetune-20-0", "finetune-20-1", "finetune-20-2"]
    found = summary.findings(tidy)
    assert list(found.columns) == summary.FINDING_COLUMNS
    assert found["verdict"].tolist() == ["yes", "yes", "yes", "not tested", "no"]
    assert found["verdict_without_flagged"].tolist() == ["yes", "not tested", "yes", "not tested", "no"]
    assert found["agrees"].tolist() == [True, False, True, True, True]
    assert found["evidence_without_flagged"].iloc[0] == found["evidence"].iloc[0]  # raw runs only: unchanged
    assert "n=20" in found["evidence"].iloc[2] and "n=20" not in found["evidence_without_flagged"].iloc[2]
    assert found["evidence_without_flagged"].iloc[4] == found["evidence"].iloc[4]  # about the flagged runs


@pytest.mark.parametrize("ratio_of", [{}, {"raw": 5.0}])
def test_findings_without_flagged_trained_runs_are_the_findings_when_none_is(ratio_of):
    """A flagged raw model is the domain shift every claim compares against: it is never left out."""
    found = summary.findings(_with_counts(_study(), ratio_of))
    assert summary.flagged_trained_runs(_with_counts(_study(), ratio_of)) == []
    assert found["agrees"].all()
    assert (found["verdict"] == found["verdict_without_flagged"]).all()
    assert (found["evidence"] == found["evidence_without_flagged"]).all()


def test_findings_names_the_sizes_that_forget():
    evidence = summary.findings(_study(ft1=(-0.01, -0.2)))["evidence"].iloc[2]
    assert "n=20: -0.195 [-0.208, -0.182]" in evidence


# ---- figures ----

def _figure_tidy():
    return make_tidy({"dataset1": [0.8, 0.7], "dataset2": [0.4, 0.5]}, {
        (arm, n, d): [[0.5 + 0.01 * n, 0.6], [0.55, 0.62]]
        for arm in ("finetune", "scratch") for n in (5, 10) for d in ("dataset1", "dataset2")})


def _summary_and_change():
    tidy = _figure_tidy()
    return summary.summarize(tidy), summary.paired_change(tidy)


def _lines(fig):
    return {t.name: t for t in fig.data if t.fill != "toself"}


def test_dice_vs_images_has_a_line_and_band_per_arm_and_dataset():
    fig = figures.dice_vs_images(_summary_and_change()[0])
    lines = _lines(fig)
    assert sorted(lines) == [f"{arm} · {d}" for arm in ("finetune", "scratch") for d in ("dataset1", "dataset2")]
    assert sum(t.fill == "toself" for t in fig.data) == 4
    assert list(lines["finetune · dataset2"].x) == [0, 5, 10]  # starts at the raw model
    assert list(lines["scratch · dataset2"].x) == [5, 10]
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_forgetting_has_arms_zero_and_tolerance_lines():
    fig = figures.forgetting(_summary_and_change()[1], tolerance=0.05)
    lines = _lines(fig)
    assert sorted(lines) == ["finetune", "scratch"]
    assert list(lines["finetune"].x) == [0, 5, 10] and lines["finetune"].y[0] == 0
    assert sorted(shape.y0 for shape in fig.layout.shapes) == pytest.approx([-0.05, 0, 0.05])
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_forgetting_margin_labels_stay_inside_the_plot_clear_of_the_legend():
    """The legend sits right of the plot; a label anchored left of the plot's right edge cannot reach it."""
    fig = figures.forgetting(_summary_and_change()[1], tolerance=0.05)
    labels = {a.text: a for a in fig.layout.annotations}
    assert sorted(labels) == ["margin +0.05", "margin -0.05"]
    assert all(a.xref == "x domain" and a.x <= 1 and a.xanchor == "right" for a in labels.values())
    assert fig.layout.legend.x is None or fig.layout.legend.x > 1  # plotly's default: outside, right


def test_forgetting_per_repeat_dots_have_one_legend_item():
    tidy = _figure_tidy()
    per_repeat = summary.repeat_change(tidy)
    fig = figures.forgetting(summary.paired_change(tidy), per_repeat=per_repeat)
    dots = [t for t in fig.data if t.legendgroup == figures.PER_REPEAT]
    assert len(dots) == 2 and [t.showlegend for t in dots].count(True) == 1
    assert all(t.mode == "markers" and len(t.x) == 4 for t in dots)  # 2 sizes x 2 repeats per arm
    finetune = per_repeat.query("arm == 'finetune' and n_images == 5 and dataset == 'dataset1'")
    assert finetune["mean_change"].tolist() == pytest.approx([-0.175, -0.165])  # mean of (0.55-0.8, 0.6-0.7) ...


def test_dice_vs_images_shows_each_repeats_mean_under_one_legend_item():
    tidy = pd.concat([_figure_tidy(), pd.DataFrame(threshold([0.3, 0.35]))], ignore_index=True)
    per_repeat = summary.repeat_means(tidy)
    fig = figures.dice_vs_images(summary.summarize(tidy), per_repeat)
    dots = {(t.hovertemplate.split("<extra>")[1].removesuffix("</extra>")): t for t in fig.data
            if t.legendgroup == figures.PER_REPEAT}
    arms = [f"{arm} · {d}" for arm in ("finetune", "raw", "scratch") for d in ("dataset1", "dataset2")]
    assert sorted(dots) == arms  # no dots for the threshold: it trains nothing
    assert [t.showlegend for t in dots.values()].count(True) == 1
    finetune = dots["finetune · dataset2"]
    assert list(finetune.x) == [5, 5, 10, 10] and list(finetune.customdata) == [0, 1, 0, 1]
    assert list(finetune.y) == pytest.approx([0.575, 0.585, 0.6, 0.585])  # n=5, r0: (0.55 + 0.6) / 2 ...
    assert finetune.marker.symbol == "diamond-open" and dots["finetune · dataset1"].marker.symbol == "circle-open"
    assert list(dots["raw · dataset2"].x) == [0]
    assert "per repeat" not in _lines(figures.dice_vs_images(summary.summarize(tidy)))


def test_bands_draw_no_markers():
    """A band is a polygon; plotly's default mode would put a dot on each of its corners."""
    for fig in (figures.dice_vs_images(_summary_and_change()[0]), figures.forgetting(_summary_and_change()[1])):
        assert all(t.mode == "lines" for t in fig.data if t.fill == "toself")


@pytest.mark.parametrize("make", [figures.dice_vs_images, figures.forgetting])
def test_figures_reject_empty_tables(make):
    with pytest.raises(ValueError, match="empty"):
        make(pd.DataFrame())


# ---- grid ----

def _mask(shape, top):
    mask = np.zeros(shape, np.uint8)
    mask[top : top + 10, 4:12] = 255
    return mask


@pytest.mark.parametrize("n_rows, n_sizes, shape", [(1, 1, (40, 16)), (4, 4, (558, 136)), (2, 3, (30, 30))])
def test_compose_grid_shape(n_rows, n_sizes, shape):
    predictions = tuple(_mask(shape, 5) for _ in range(n_sizes + 1))
    rows = [grid.GridRow(f"dataset1/{i:03d}", np.full(shape, 100, np.uint8), predictions, _mask(shape, 8),
                         dice=(0.5,) * len(predictions)) for i in range(n_rows)]
    headers = ["Original", "Raw"] + [f"{5 * (k + 1)} images" for k in range(n_sizes)] + ["Ground truth"]
    image = grid.compose_grid(rows, headers)
    columns = 2 + n_sizes + 1
    assert image.dtype == np.uint8 and image.shape == (
        grid.HEADER_HEIGHT + n_rows * (shape[0] + grid.GAP),
        grid.LABEL_WIDTH + columns * shape[1] + (columns - 1) * grid.GAP, 3)


def test_contour_panel_draws_the_outline_only():
    mask = np.zeros((30, 30), np.uint8)
    mask[5:25, 5:25] = 255
    panel = grid.contour_panel(np.full((30, 30), 100, np.uint8), mask, (255, 0, 0), thickness=1)
    assert tuple(panel[5, 10]) == (255, 0, 0) and tuple(panel[15, 15]) == (100, 100, 100)


@pytest.mark.parametrize("rows, headers, message", [
    ([], ["Original", "Ground truth"], "at least one row"),
    ([grid.GridRow("x", np.zeros((8, 8), np.uint8), (np.zeros((8, 8)),), np.zeros((8, 8)))], ["a", "b"], "columns"),
])
def test_compose_grid_rejects_bad_rows(rows, headers, message):
    with pytest.raises(ValueError, match=message):
        grid.compose_grid(rows, headers)


@pytest.mark.parametrize("shape, max_pixels, expected", [
    ((2274, 1138, 3), 2_000_000, (1999, 1000)),  # the quickstart's grid: shrunk to the budget, aspect kept
    ((100, 40, 3), 2_000_000, (100, 40)),  # never enlarged
    ((6770, 1138, 3), 2_000_000, (3449, 579)),  # a tall grid of 12 rows keeps half its width
])
def test_encode_jpeg_keeps_the_grid_within_its_pixel_budget(shape, max_pixels, expected):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    decoded = cv2.imdecode(np.frombuffer(grid.encode_jpeg(image, max_pixels), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape[:2] == expected and decoded.shape[0] * decoded.shape[1] <= max_pixels


def test_encode_jpeg_keeps_colours_and_rejects_non_rgb():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = grid.PREDICTION_COLOUR
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(grid.encode_jpeg(image), np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert np.abs(decoded[32, 8].astype(int) - grid.PREDICTION_COLOUR).max() < 8
    with pytest.raises(ValueError, match="uint8 RGB"):
        grid.encode_jpeg(image[..., 0])


def test_write_png_round_trips(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (12, 7, 3), dtype=np.uint8)
    path = grid.write_png(image, tmp_path / "g.png")
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image)
    with pytest.raises(ValueError, match="uint8 RGB"):
        grid.write_png(image[..., 0], tmp_path / "bad.png")


# ---- a report from a real store ----

class _Resources(HTMLParser):
    """Every src/href of the tags that load something."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "img", "iframe"):
            self.urls += [value or "" for name, value in attrs if name in ("src", "href")]


REASON = "Highest validation Dice on held-out pool images among the runs not flagged as degenerate (0.912)."


def _tag_champion(uri: str, parent_run_id: str) -> str:
    """Tag the fake study as ``segft study`` does: the champion's model URI and reason on the parent, the model URI
    on the child run that logged it (finetune n=4 repeat 1); returns that run's id."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    child = client.search_runs([parent.info.experiment_id], f"tags.`{schema.RUN_KEY_TAG}` = 'finetune/n4/r1' "
                               "and attributes.status = 'FINISHED'")[0]
    client.set_tag(child.info.run_id, schema.MODEL_URI_TAG, "models:/segft-finetuned/7")
    client.set_tag(parent_run_id, schema.CHAMPION_TAG, "models:/segft-finetuned/7")
    client.set_tag(parent_run_id, schema.CHAMPION_REASON_TAG, REASON)
    return child.info.run_id


def test_report_from_a_fake_study(fake_study_store, fake_study_design, tmp_path):
    uri, study_id, parent_run_id = fake_study_store
    design = fake_study_design
    champion_run = _tag_champion(uri, parent_run_id)
    report = build_report(ReportConfig(tracking_uri=uri, report_dir=str(tmp_path / "report"), grid_images=2))
    assert report.champion == Champion("models:/segft-finetuned/7", f"finetune n=4 repeat 1 (run {champion_run})",
                                       REASON)

    assert (report.study_id, report.parent_run_id) == (study_id, parent_run_id)
    n_test_images = len(design.datasets) * len(design.images)
    assert len(report.tidy) == design.n_runs * n_test_images  # the FAILED duplicate is left out
    assert set(report.tidy["image"]) == set(design.images)
    assert (report.summary["ci_low"] <= report.summary["mean"] + 1e-12).all()
    assert (report.summary["mean"] <= report.summary["ci_high"] + 1e-12).all()
    assert len(report.summary) == (1 + len(design.arms) * len(design.sizes)) * len(design.datasets)
    assert report.findings["verdict"].tolist()[:3] == ["yes", "yes", "yes"]
    assert report.findings["agrees"].all()  # the fake study's runs predict plausible masks: none is flagged

    assert set(report.files) == {"report.html", "tidy.csv", "summary.csv", "paired_change.csv", "grid.png",
                                 "degenerate_runs.csv", "learning_curve.csv"}
    assert all(path.parent == tmp_path / "report" / study_id for path in report.files.values())
    image = cv2.imread(str(report.files["grid.png"]))
    columns = 2 + len(design.sizes) + 1
    height, width = design.shape
    assert image.shape == (grid.HEADER_HEIGHT + 2 * len(design.datasets) * (height + grid.GAP),
                           grid.LABEL_WIDTH + columns * width + (columns - 1) * grid.GAP, 3)

    page = report.html.read_text()
    parser = _Resources()
    parser.feed(page)
    parser.close()
    assert parser.urls and not [u for u in parser.urls if u.startswith(("http:", "https:", "//"))]
    assert page.count('<script id="plotly-js-gzip"') == 1  # plotly.js inlined once (tests/test_report_size.py)
    assert page.count('class="plotly-graph-div"') == 2
    assert "data:image/jpeg;base64," in page and '<a href="grid.png">' in page and "0123456789abcdef" in page
    champion = page.split("<h2>Champion</h2>")[1].split("<h2>")[0]
    assert "models:/segft-finetuned/7, logged by finetune n=4 repeat 1" in champion and REASON in champion
    assert "No trained run is flagged as degenerate" in page and "without flagged runs" not in page
    assert page.count(figures.PER_REPEAT) >= 2  # the dots of both figures
    record_section = page.split("<h2>Record</h2>")[1].split("<h2>")[0]
    assert "<td>preset</td>" in record_section and "<td>wall time</td>" in record_section
    assert "(not recorded)" in record_section  # the fake parent logged no machine facts
    settings = page.split('<h2 id="settings">Settings</h2>')[1]
    assert "<td>epochs</td>" in settings and "<td>given</td>" in settings and "<td></td>" not in settings

    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent_run_id, "report")}
    assert {f"report/{name}" for name in report.files} <= logged

    text = text_summary(report)
    assert study_id in text and str(report.html) in text and "mlflow ui" in text and "finetune" in text
    assert f"Champion: models:/segft-finetuned/7, logged by finetune n=4 repeat 1 (run {champion_run}). " in text


def _flagged_report(tmp_path, champion: Champion = Champion()) -> Report:
    """A report object (no store) of ``_study`` with its three n=20 runs flagged on Dataset 2."""
    tidy = _flag_dataset2(_study(), {"finetune-20-0", "finetune-20-1", "finetune-20-2"})
    return Report("s1", "p1", "0", "sqlite:///mlflow.db", tmp_path, files={"report.html": tmp_path / "report.html"},
                  tidy=tidy, summary=summary.summarize(tidy), findings=summary.findings(tidy),
                  degenerate=summary.degenerate_runs(tidy), champion=champion)


def test_text_summary_says_when_a_flagged_run_carries_a_finding(tmp_path):
    text = text_summary(_flagged_report(tmp_path))
    assert "3 trained run(s) flagged as degenerate (finetune-20-0, finetune-20-1, finetune-20-2)" in text
    assert "1 verdict(s) change" in text
    lines = text.splitlines()
    gain = next(i for i, line in enumerate(lines) if "Dice with the most images exceeds" in line)
    assert lines[gain].startswith("  [yes]")
    assert lines[gain + 1].startswith("      without the flagged runs: [not tested]") and "DISAGREE" in lines[gain + 1]
    assert sum("without the flagged runs" in line for line in lines) == 2  # the size gain and Dataset 1's sizes
    assert "Champion: none recorded on the study's parent run." in text


def test_report_page_shows_both_verdicts_when_a_run_is_flagged(tmp_path):
    html = report_module._findings_html(_flagged_report(tmp_path))
    assert "verdict without flagged runs" in html and html.count("DISAGREES") == 1


@pytest.mark.parametrize("champion, sentence", [
    (Champion(), "none recorded on the study's parent run."),
    (Champion(reason="Every fine-tuned run is flagged."), "none. Every fine-tuned run is flagged."),
    (Champion("models:/m/2", "finetune n=8 repeat 0 (run r)", "Best."), "models:/m/2, logged by finetune n=8 "
     "repeat 0 (run r). Best."),
    (Champion("models:/m/2"), "models:/m/2. The study recorded no reason."),
])
def test_champion_sentence(champion, sentence):
    assert champion.sentence() == sentence


@pytest.mark.parametrize("config, message", [
    (dict(study_id="000000000000"), "no study '000000000000'"),
    (dict(experiment="no-such-experiment"), "no experiment named"),
    (dict(study_id="x' or '1'='1"), "study id must be"),
])
def test_report_of_a_missing_study_is_a_clear_error(fake_study_store, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        build_report(ReportConfig(tracking_uri=fake_study_store.tracking_uri, report_dir=str(tmp_path), **config))


def test_read_study_picks_the_study_by_id(fake_study_store):
    client = MlflowClient(fake_study_store.tracking_uri)
    study = query.read_study(client, fake_study_store.study_id)
    assert study.parent.run_id == fake_study_store.parent_run_id
    assert {query.run_coordinates(r)["arm"] for r in study.children} == {"raw", "finetune", "scratch"}


def test_the_report_answers_how_many_images_from_a_study_of_four_sizes(tmp_path):
    from test_curve import simulate

    tidy = simulate(np.random.default_rng(0)).assign(tp=0, fp=0, fn=0)
    curves = curve.learning_curves(tidy, target=0.8, n_resamples=100)
    report = Report("s1", "p1", "0", "sqlite:///mlflow.db", tmp_path, files={"report.html": tmp_path / "r.html"},
                    tidy=tidy, findings=pd.DataFrame(columns=summary.FINDING_COLUMNS), curves=curves)
    section = report_module._curve_html(report)
    assert "learning-curve" in section and "n=40" in section and "images for Dice 0.8" in section
    text = text_summary(Report(**{**report.__dict__, "summary": summary.summarize(tidy)}))
    assert "Learning curve (Dataset 2, without flagged runs):" in text and "back-test, fitted on n = 5, 10, 15" in text
