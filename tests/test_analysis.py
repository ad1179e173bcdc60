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

from analysis import figures, grid, query, summary
from analysis.report import build_report, text_summary
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

@pytest.mark.parametrize("values", [[0.1, 0.5, 0.7, 0.2], [0.9, 0.95], [0.0, 1.0, 0.5, 0.5, 0.25, 0.75]])
def test_bootstrap_ci_contains_mean_and_is_reproducible(values):
    low, high = summary.bootstrap_ci(np.array(values))
    assert low <= np.mean(values) <= high and low < high
    assert summary.bootstrap_ci(np.array(values)) == (low, high)


@pytest.mark.parametrize("values, expected", [
    ([0.7], (0.7, 0.7)), ([0.3, 0.3, 0.3], (0.3, 0.3)), ([0.0] * 5, (0.0, 0.0)),
])
def test_bootstrap_ci_degenerate_is_the_value_without_warnings(values, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summary.bootstrap_ci(np.array(values)) == expected


@pytest.mark.parametrize("values, confidence, message", [
    ([], 0.95, "at least one finite"), ([0.1, np.nan], 0.95, "at least one finite"), ([0.1, 0.2], 1.5, "confidence"),
])
def test_bootstrap_ci_rejects_bad_input(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        summary.bootstrap_ci(np.array(values), confidence)


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
    """Two images, two repeats; Dataset 2 finetune Dice per size and Dataset 1 change from raw per size."""
    runs = {}
    for n, d2 in zip(sizes, (ft_small, ft_large)):
        runs[("finetune", n, "dataset2")] = [[d2, d2 + 0.02], [d2 + 0.01, d2 + 0.03]]
    for n, change in zip(sizes, ft1):
        d1 = raw1 + change
        runs[("finetune", n, "dataset1")] = [[d1, d1 + 0.02], [d1 + 0.01, d1 + 0.03]]
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


def test_size_gain_states_the_trend_test():
    tidy = table(RAW, FT_D2, rows("finetune", 10, "dataset2", [[0.6, 0.62], [0.61, 0.63]]))
    assert "Page's L test" in summary.findings(tidy)["evidence"].iloc[1]
    assert "an increasing trend" in summary.findings(tidy)["evidence"].iloc[1]


# ---- hierarchical intervals ----

def nested_table(image_sd: float, repeat_sd: float, images: int = 8, repeats: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    effect = rng.normal(0.6, image_sd, images)
    return pd.DataFrame([{"image": f"{i:03d}", "repeat": r, "dice": effect[i] + rng.normal(0, repeat_sd)}
                         for i in range(images) for r in range(repeats)])


def test_hierarchical_interval_is_wider_than_the_row_bootstrap_when_images_differ_more_than_repeats():
    """With images that differ (sd 0.15) and repeats that barely do (sd 0.005), the 24 rows carry only 8 images'
    worth of information: the row bootstrap, which treats them as independent, is too narrow by about sqrt(3)."""
    tidy = nested_table(image_sd=0.15, repeat_sd=0.005)
    low, high = summary.hierarchical_ci(tidy)
    row_low, row_high = summary.bootstrap_ci(tidy["dice"].to_numpy())
    assert (high - low) > 1.4 * (row_high - row_low)
    assert low <= tidy["dice"].mean() <= high


def test_hierarchical_interval_is_the_image_bootstrap_with_one_repeat():
    tidy = nested_table(image_sd=0.1, repeat_sd=0.0, repeats=1)
    low, high = summary.hierarchical_ci(tidy)
    row_low, row_high = summary.bootstrap_ci(tidy["dice"].to_numpy())
    assert (high - low) == pytest.approx(row_high - row_low, rel=0.15)


def test_summary_says_how_its_intervals_were_made():
    table_ = summary.summarize(_study())
    assert (table_["ci_method"] == summary.CI_METHOD).all() and "hierarchical" in summary.CI_METHOD
    assert {"images", "repeats"} <= set(table_.columns)


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


def test_findings_names_the_sizes_that_forget():
    evidence = summary.findings(_study(ft1=(-0.01, -0.2)))["evidence"].iloc[2]
    assert "n=20: -0.195 [-0.200, -0.190]" in evidence


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


def test_report_from_a_fake_study(fake_study_store, fake_study_design, tmp_path):
    uri, study_id, parent_run_id = fake_study_store
    design = fake_study_design
    report = build_report(ReportConfig(tracking_uri=uri, report_dir=str(tmp_path / "report"), grid_images=2))

    assert (report.study_id, report.parent_run_id) == (study_id, parent_run_id)
    n_test_images = len(design.datasets) * len(design.images)
    assert len(report.tidy) == design.n_runs * n_test_images  # the FAILED duplicate is left out
    assert set(report.tidy["image"]) == set(design.images)
    assert (report.summary["ci_low"] <= report.summary["mean"] + 1e-12).all()
    assert (report.summary["mean"] <= report.summary["ci_high"] + 1e-12).all()
    assert len(report.summary) == (1 + len(design.arms) * len(design.sizes)) * len(design.datasets)
    assert report.findings["verdict"].tolist()[:3] == ["yes", "yes", "yes"]

    assert set(report.files) == {"report.html", "tidy.csv", "summary.csv", "paired_change.csv", "grid.png",
                                 "degenerate_runs.csv"}
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

    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent_run_id, "report")}
    assert {f"report/{name}" for name in report.files} <= logged

    text = text_summary(report)
    assert study_id in text and str(report.html) in text and "mlflow ui" in text and "finetune" in text


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
    assert study.parent.info.run_id == fake_study_store.parent_run_id
    assert {query.run_coordinates(r)["arm"] for r in study.children} == {"raw", "finetune", "scratch"}
