"""Interactive plotly figures of a study: Dice against the number of fine-tuning images, and forgetting.

Each line carries its confidence interval as a shaded band (a closed polygon drawn with ``fill="toself"``) in the
same legend group, so clicking a legend entry hides the line and its band together.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from analysis.summary import FORGETTING_MARGIN
from segft.schema import DATASET1, DATASET2, FINETUNE_ARM, JOINT_ARM, RAW_ARM, SCRATCH_ARM, THRESHOLD_ARM

#: Arms that start from the base model: at 0 Dataset 2 images they are the raw model.
FROM_BASE = (FINETUNE_ARM, JOINT_ARM)
ARM_COLOURS = {FINETUNE_ARM: "#0072B2", SCRATCH_ARM: "#D55E00", JOINT_ARM: "#009E73",  # Okabe-Ito, colour-blind
               THRESHOLD_ARM: "#999999"}
DATASET_DASH = {DATASET1: "dot"}
#: Per-repeat dots: open circles on Dataset 1, open diamonds on Dataset 2 (a dot has no dash to tell them apart).
DATASET_SYMBOL = {DATASET1: "circle-open", DATASET2: "diamond-open"}
X_TITLE = "Dataset 2 images used for training"
#: The legend item of the per-repeat dots (both figures).
PER_REPEAT = "per repeat"


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _add_line(fig: go.Figure, points: pd.DataFrame, y: str, name: str, colour: str, dash: str) -> None:
    """A line through ``points[y]`` with its ``ci_low``..``ci_high`` band; ``points`` sorted by n_images."""
    x = points["n_images"].tolist()
    fig.add_trace(go.Scatter(
        x=x + x[::-1], y=points["ci_high"].tolist() + points["ci_low"].tolist()[::-1], fill="toself",
        mode="lines", fillcolor=_rgba(colour, 0.15), line={"width": 0}, hoverinfo="skip", showlegend=False,
        legendgroup=name, name=f"{name} 95% CI",
    ))
    fig.add_trace(go.Scatter(
        x=x, y=points[y], mode="lines+markers", name=name, legendgroup=name, line={"color": colour, "dash": dash},
        customdata=points[["ci_low", "ci_high"]], hovertemplate="n=%{x}: %{y:.3f} [%{customdata[0]:.3f}, "
        "%{customdata[1]:.3f}]<extra>" + name + "</extra>",
    ))


def _dataset1(table: pd.DataFrame) -> pd.DataFrame:
    """Dataset 1 rows of the arms that train (the threshold trains nothing, so it cannot forget)."""
    return table[(table["dataset"] == DATASET1) & (table["arm"] != THRESHOLD_ARM)]


def _colour(arm: str) -> str:
    return ARM_COLOURS.get(arm, "#555555")


def _x_axis(fig: go.Figure, sizes: list[int]) -> None:
    fig.update_xaxes(title_text=X_TITLE, tickvals=sorted({0, *sizes}), range=[-0.5, max([0, *sizes]) + 0.5])


def _check(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"{what} table is empty or lacks columns {missing}")


def dice_vs_images(summary: pd.DataFrame, per_repeat: pd.DataFrame | None = None) -> go.Figure:
    """Mean test Dice against the number of Dataset 2 training images, one line per dataset × arm.

    Arms that start from the base model (finetune, joint) begin at x = 0 with the raw model; scratch has no
    0 point; the threshold arm (no training) is a level line across the plot. Dataset 1 lines are dotted, Dataset 2
    lines solid; bands are 95 % bootstrap CIs. Each repeat's own mean Dice, when given, is an open marker in its
    arm's colour (circle: Dataset 1, diamond: Dataset 2); one legend item, "per repeat", shows or hides them all.

    Args:
        summary: Output of ``analysis.summary.summarize``.
        per_repeat: Output of ``analysis.summary.repeat_means``, or None for no dots.

    Raises:
        ValueError: If ``summary`` is empty or lacks the needed columns.
    """
    _check(summary, ["arm", "n_images", "dataset", "mean", "ci_low", "ci_high"], "summary")
    fig = go.Figure()
    raw = summary[summary["arm"] == RAW_ARM]
    sizes = sorted({0, *summary["n_images"]})
    for (arm, dataset), points in summary[summary["arm"] != RAW_ARM].groupby(["arm", "dataset"], sort=True):
        if arm in FROM_BASE:
            points = pd.concat([raw[raw["dataset"] == dataset], points])
        if arm == THRESHOLD_ARM:  # no training images: a level line across the plot, what a model must beat
            points = pd.concat([points.assign(n_images=sizes[0]), points.assign(n_images=sizes[-1])])
        _add_line(fig, points.sort_values("n_images"), "mean", f"{arm} · {dataset}", _colour(arm),
                  DATASET_DASH.get(dataset, "solid"))
    if summary["arm"].eq(RAW_ARM).all():  # a study with only the raw model: show it as points
        for dataset, points in raw.groupby("dataset"):
            _add_line(fig, points, "mean", f"raw · {dataset}", "#555555", DATASET_DASH.get(dataset, "solid"))
    if per_repeat is not None:
        _add_repeat_dots(fig, per_repeat, "mean")
    fig.update_layout(title="Test Dice vs number of Dataset 2 training images (mean, 95% bootstrap CI)",
                      yaxis_title="Dice (mean over repeats × test images)", hovermode="closest",
                      legend_title_text="arm · test set")
    fig.update_yaxes(range=[0, 1.02])
    _x_axis(fig, summary["n_images"].tolist())
    return fig


def _add_repeat_dots(fig: go.Figure, per_repeat: pd.DataFrame, y: str,
                     datasets: tuple[str, ...] = (DATASET1, DATASET2)) -> None:
    """Each repeat's ``per_repeat[y]`` on ``datasets`` as an open marker in its arm's colour (``DATASET_SYMBOL``),
    all under one legend item; the threshold arm trains nothing, so it has no repeats to show."""
    _check(per_repeat, ["arm", "n_images", "dataset", "repeat", y], "per-repeat")
    shown = per_repeat[per_repeat["dataset"].isin(datasets) & (per_repeat["arm"] != THRESHOLD_ARM)]
    for index, ((arm, dataset), points) in enumerate(shown.groupby(["arm", "dataset"], sort=True)):
        fig.add_trace(go.Scatter(
            x=points["n_images"], y=points[y], mode="markers", name=PER_REPEAT, legendgroup=PER_REPEAT,
            showlegend=index == 0, customdata=points["repeat"],
            marker={"color": _colour(arm), "symbol": DATASET_SYMBOL.get(dataset, "circle-open"), "size": 8},
            hovertemplate="n=%{x}, repeat %{customdata}: %{y:.3f}<extra>" + f"{arm} · {dataset}</extra>",
        ))


def forgetting(change: pd.DataFrame, tolerance: float = FORGETTING_MARGIN,
               per_repeat: pd.DataFrame | None = None) -> go.Figure:
    """Dataset 1 paired change of Dice against the raw model, one line per arm, with CI bands.

    The zero line is no change; dashed lines at ±``tolerance`` mark the band within which the study calls the
    change "no forgetting", labelled inside the plot's right edge (outside it, a label would run into the legend).
    Arms from the base model start at (0, 0): there they are the raw model. Each repeat's own mean change, when
    given, is an open circle in its arm's colour; one legend item, "per repeat", shows or hides them all.

    Args:
        change: Output of ``analysis.summary.paired_change``.
        tolerance: Where to draw the guide lines.
        per_repeat: Output of ``analysis.summary.repeat_change``, or None for no dots.

    Raises:
        ValueError: If ``change`` is empty or lacks the needed columns.
    """
    _check(change, ["arm", "n_images", "dataset", "mean_change", "ci_low", "ci_high"], "paired change")
    fig = go.Figure()
    for arm, points in _dataset1(change).groupby("arm", sort=True):
        if arm in FROM_BASE:
            start = pd.DataFrame([{"n_images": 0, "mean_change": 0.0, "ci_low": 0.0, "ci_high": 0.0}])
            points = pd.concat([start, points])
        _add_line(fig, points.sort_values("n_images"), "mean_change", arm, _colour(arm), "solid")
    if per_repeat is not None:
        _add_repeat_dots(fig, per_repeat, "mean_change", datasets=(DATASET1,))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    for y, position in ((tolerance, "top right"), (-tolerance, "bottom right")):
        fig.add_hline(y=y, line={"color": "grey", "dash": "dash", "width": 1},
                      annotation_text=f"margin {y:+.2f}", annotation_position=position)
    fig.update_layout(title="Forgetting: Dataset 1 Dice change vs the raw model (paired per test image, 95% CI)",
                      yaxis_title="Δ Dice on Dataset 1 (arm − raw)", legend_title_text="arm")
    _x_axis(fig, change["n_images"].tolist())
    return fig
