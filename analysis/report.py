"""A study's report: tables, figures, the overlay grid and the findings in one self-contained HTML page.

``build_report`` reads the study through the MLflow client, writes ``<report_dir>/<study_id>/`` and logs that
folder on the study's parent run under ``report/`` through ``segft.tracking`` (analysis reads MLflow; only the
adapter writes to it); ``text_summary`` is what the terminal shows afterwards.
The page opens offline and stays light (under 4 MB for a study of the quickstart's shape): plotly.js is inlined
once, packed (``analysis.plotly_inline``); the grid is a JPEG data URI (``analysis.grid.encode_jpeg``) linking to
the full-resolution ``grid.png`` beside the page; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from mlflow import MlflowClient

from analysis import curve, figures, grid, plotly_inline, query, record, summary
from segft import quality, schema, tracking
from segft.config import ReportConfig
from segft.urls import redact

#: The full-resolution overlay grid, beside the page; the page holds a lighter copy and links to it.
GRID_FILE = "grid.png"


@dataclass(frozen=True)
class Champion:
    """The model a study recommends, as its parent run records it (``segft.study`` writes the tags).

    Attributes:
        model_uri: The parent's ``segft.champion`` tag (``models:/<name>/<version>``, the version the ``champion``
            alias points at); empty when the study recommends none.
        run: The child run that logged that model version: ``arm n=<n> repeat <r> (run <id>)``; empty when no
            child run carries the model URI.
        reason: The parent's ``segft.champion_reason`` tag: the rule and why this run won (or why none did);
            empty for studies run before segft wrote it.
    """

    model_uri: str = ""
    run: str = ""
    reason: str = ""

    @classmethod
    def of(cls, study: query.Study) -> Champion:
        """Read the champion tags of ``study``'s parent and find the child run that logged the model."""
        tags = study.parent.tags
        model_uri = tags.get(schema.CHAMPION_TAG, "")
        runs = [query.run_coordinates(r) for r in study.children
                if model_uri and r.tags.get(schema.MODEL_URI_TAG) == model_uri]
        run = (f"{runs[0]['arm']} n={runs[0]['n_images']} repeat {runs[0]['repeat']} (run {runs[0]['run_id']})"
               if runs else "")
        return cls(model_uri, run, tags.get(schema.CHAMPION_REASON_TAG, ""))

    def sentence(self) -> str:
        """One line for the terminal and the page."""
        if not self.model_uri:
            return f"none. {self.reason}" if self.reason else "none recorded on the study's parent run."
        where = f", logged by {self.run}" if self.run else ""
        return f"{self.model_uri}{where}. {self.reason or 'The study recorded no reason.'}"


@dataclass(frozen=True, eq=False)
class Report:
    """A written report and what it found.

    Attributes:
        study_id: The study's ``segft.study_id``.
        parent_run_id: The study's parent run; the report is logged there under ``report/``.
        experiment_id: The experiment holding the study.
        tracking_uri: The tracking store read (MLflow's default resolved when none was given).
        directory: Local folder holding the files below (``<report_dir>/<study_id>``).
        files: ``{name: path}`` of report.html, tidy.csv, summary.csv, paired_change.csv, degenerate_runs.csv,
            learning_curve.csv and grid.png.
        tidy: One row per run × dataset × test image (``analysis.query.TIDY_COLUMNS``).
        summary: ``analysis.summary.summarize`` of ``tidy``.
        paired_change: ``analysis.summary.paired_change`` of ``tidy``.
        findings: ``analysis.summary.findings`` of ``tidy``: each claim with every run and without the trained
            runs flagged as degenerate.
        degenerate: ``analysis.summary.degenerate_runs`` of ``tidy``.
        champion: The model the study recommends and why (``Champion``).
        curves: The learning curve of every trained arm run at 3 sizes or more (``analysis.curve``), fitted
            without the trained runs flagged as degenerate.
    """

    study_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    tidy: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    paired_change: pd.DataFrame = field(default_factory=pd.DataFrame)
    findings: pd.DataFrame = field(default_factory=pd.DataFrame)
    degenerate: pd.DataFrame = field(default_factory=pd.DataFrame)
    champion: Champion = field(default_factory=Champion)
    curves: list[curve.CurveAnswer] = field(default_factory=list)

    @property
    def html(self) -> Path:
        """The report page."""
        return self.files["report.html"]


def _runs_table(study: query.Study) -> pd.DataFrame:
    rows = [{"run_key": run.tags.get(query.RUN_KEY_TAG, ""), **query.run_coordinates(run),
             **{k: round(v, 4) for k, v in sorted(run.metrics.items()) if k.startswith(("test_dice_", "test_fg_"))}}
            for run in study.children]
    return pd.DataFrame(rows).sort_values(["arm", "n_images", "repeat"], key=summary.arm_first, ignore_index=True)


def _table_html(table: pd.DataFrame, table_id: str = "") -> str:
    """A table that scrolls sideways inside its box when wider than the page (the page itself never does)."""
    html_table = table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0, classes="t",
                               table_id=table_id or None)
    return f'<div class="scroll">{html_table}</div>'



def _flagged_note(report: Report) -> str:
    """Which runs the second verdict of each finding leaves out, in words."""
    flagged = summary.flagged_trained_runs(report.tidy)
    if not flagged:
        return "No trained run is flagged as degenerate: each verdict stands as it is."
    disagree = int((~report.findings["agrees"]).sum())
    return (f"{len(flagged)} trained run(s) flagged as degenerate ({', '.join(flagged)}); each finding is also "
            f"decided without them: {disagree or 'no'} verdict(s) change.")


def _findings_html(report: Report) -> str:
    table = report.findings
    if table["agrees"].all() and (table["evidence"] == table["evidence_without_flagged"]).all():
        return _table_html(table[["claim", "verdict", "evidence"]])
    shown = table.assign(agrees=table["agrees"].map({True: "yes", False: "DISAGREES"}))
    return _table_html(shown.rename(columns={"verdict_without_flagged": "verdict without flagged runs",
                                             "evidence_without_flagged": "evidence without flagged runs",
                                             "agrees": "same verdict"}))


def _page(report: Report, params: dict[str, str], times: tuple[int | None, int | None], runs: pd.DataFrame,
          figs: dict[str, go.Figure], overlay_grid: np.ndarray, grid_note: str) -> str:
    """The report page: plotly.js once, then the figures; the grid as a JPEG linking to ``GRID_FILE``."""
    plots = "\n".join(plotly_inline.figure_html(fig, f"figure-{name}") for name, fig in figs.items())
    grid_uri = "data:image/jpeg;base64," + base64.b64encode(grid.encode_jpeg(overlay_grid)).decode()
    e = html.escape
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>segft study {e(report.study_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table.t {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }}
table.t th, table.t td {{ padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }}
div.scroll {{ max-width: 100%; overflow-x: auto; }}
img.grid {{ max-width: 100%; }} code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style>
{plotly_inline.loader_html()}
</head><body>
<h1>segft study <code>{e(report.study_id)}</code></h1>
<p>Parent run <code>{e(report.parent_run_id)}</code> in experiment <code>{e(report.experiment_id)}</code> of
<code>{e(redact(report.tracking_uri))}</code>; data digest <code>{e(params.get(schema.DATA_DIGEST_PARAM, "?"))}</code>;
{len(runs)} finished runs; generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.</p>
<h2>Record</h2><p>When, where and with which code the study ran; every setting it used is in
<a href="#settings">Settings</a>.</p>{_table_html(record.record_table(params, *times), "record-table")}
<h2>Champion</h2><p>{e(report.champion.sentence())}</p><p>The rule: among the fine-tuned runs, every one scored
on the same selection images (the Dataset 2 pool and Dataset 1's training images, never a test image), none
flagged as degenerate on them; the best mean Dataset 2 Dice wins, differences inside the noise of a paired image
bootstrap are ties, and among tied runs the one trained on the most images wins (<code>segft/champion.py</code>).</p>
<h2>Findings</h2><p>Each finding is decided on an interval: yes, no, or undecided when the interval straddles
the bound. A trained run flagged as degenerate cannot carry a finding. {e(_flagged_note(report))}</p>
{_findings_html(report)}
<h2>Runs flagged as degenerate</h2><p>Predicted foreground over {quality.DEGENERATE_RATIO:g}x or under
1/{quality.DEGENERATE_RATIO:g} of the true foreground on a test set (fg_ratio), or exactly the same masks as another
size of the same arm and repeat. A flagged raw model shows the domain shift; a trained model flagged on the data
it trained on did not learn it, and a fine-tuned model flagged on Dataset 1 forgot it.
(The champion rule applies the same test on its selection images, the Dataset 2 pool and Dataset 1's training
images, never on these.)</p>
{_table_html(record.degenerate_table(report.degenerate), "degenerate-table") if not report.degenerate.empty
 else "<p>None.</p>"}<p>The full sentences: <code>degenerate_runs.csv</code> beside this page.</p>
<h2>Dice and forgetting vs number of Dataset 2 images</h2>{plots}
<h2>How many images? The learning curve</h2>{_curve_html(report)}
<h2>Overlay comparison</h2><p>{e(grid_note)} Shown as a JPEG of at most {grid.INLINE_PIXELS:,} pixels; full
resolution: <a href="{GRID_FILE}">{GRID_FILE}</a> beside this page (also under <code>report/</code> on the parent
run).</p><img class="grid" alt="overlay grid" src="{grid_uri}">
<h2>Mean test Dice</h2><p>95% confidence intervals from a crossed (pigeonhole) percentile bootstrap: every repeat is
scored on the same test images, so each of {summary.N_RESAMPLES} resamples draws the repeats once and each
dataset's test images once, with replacement, and every arm, size and difference is computed on that same draw
(McCullagh 2000; Owen 2007). For few repeats the draws are rescaled by sqrt(R/(R-1)) and sqrt(I/(I-1)) (Rao &amp;
Wu 1988) and the interval widened by t/z with Satterthwaite degrees of freedom; details in
<code>analysis/summary.py</code>. With one base model per repeat, base-training variance is inside every
interval. The dots of the Dice figure are each repeat's own mean.</p>{_table_html(report.summary)}
<h2>Paired change against the raw model (per test image and repeat)</h2>{_table_html(report.paired_change)}
<h2>Runs</h2>{_table_html(runs)}
<h2 id="settings">Settings</h2><p>Every setting the study ran with: from its preset
(<code>{e(params.get("preset", "?"))}</code>), its default, or given explicitly.</p>
{_table_html(record.settings_table(params), "settings-table")}
</body></html>
"""


def _curve_html(report: Report) -> str:
    if not report.curves:
        return (f"<p>A learning curve needs a trained arm run at {curve.MIN_SIZES} sizes or more; this study has "
                "fewer.</p>")
    return ("<p>Dataset 2 test Dice against n fitted with Dice(n) = a - b n<sup>-c</sup> by weighted least squares "
            "(Figueroa et al. 2012), without the trained runs flagged as degenerate; 95% intervals from refitting on "
            "the study's crossed bootstrap resamples (<code>analysis/curve.py</code>). The back-test fits the "
            "curve without the largest size and predicts it: how far the extrapolation can be trusted.</p>"
            + _table_html(curve.curve_table(report.curves), "learning-curve"))


def _margin(params: dict[str, str]) -> float:
    """The study's ``forgetting_margin`` (logged on its parent run), else the default."""
    return float(params.get("forgetting_margin", summary.FORGETTING_MARGIN))


def _grid_arm(tidy: pd.DataFrame) -> str:
    arms = [a for a in schema.TRAINED_ARMS if (tidy["arm"] == a).any()]
    return arms[0] if arms else schema.FINETUNE_ARM


def build_report(config: ReportConfig) -> Report:
    """Read a study back through MLflow, write its report folder and log it on the study's parent run.

    Args:
        config: Tracking store, study (or the newest), output folder and grid size.

    Returns:
        The report: where its files are, and its summary, paired change and findings tables.

    Raises:
        ValueError: If the study cannot be found or its runs lack what the report needs.
    """
    client = MlflowClient(config.tracking_uri or None)
    study = query.read_study(client, config.study_id, config.experiment)
    tidy = query.tidy_table(client, study)
    parent = study.parent
    folder = Path(config.report_dir) / study.study_id
    folder.mkdir(parents=True, exist_ok=True)
    report = Report(study.study_id, parent.run_id, parent.experiment_id, client.tracking_uri, folder,
                    tidy=tidy, summary=summary.summarize(tidy), paired_change=summary.paired_change(tidy),
                    findings=summary.findings(tidy, _margin(parent.params)),
                    degenerate=summary.degenerate_runs(tidy), champion=Champion.of(study),
                    curves=curve.learning_curves(
                        tidy[~tidy["run_id"].isin(summary.flagged_trained_runs(tidy))], config.dice_target))
    files = report.files  # filled in as they are written
    for name, table in (("tidy.csv", tidy), ("summary.csv", report.summary),
                        ("paired_change.csv", report.paired_change), ("degenerate_runs.csv", report.degenerate),
                        ("learning_curve.csv", curve.curve_table(report.curves))):
        table.to_csv(folder / name, index=False)
        files[name] = folder / name
    # the figures live in report.html only: one inlined copy of plotly.js per report is enough
    figs = {"dice_vs_images": figures.dice_vs_images(report.summary, summary.repeat_means(tidy)),
            "forgetting": figures.forgetting(report.paired_change, _margin(parent.params),
                                             summary.repeat_change(tidy))}
    arm = _grid_arm(tidy)
    headers, rows = grid.load_grid(client, parent.run_id, tidy, config.grid_images, arm=arm)
    overlay_grid = grid.compose_grid(rows, headers)
    files[GRID_FILE] = grid.write_png(overlay_grid, folder / GRID_FILE)
    note = (f"Predictions of the raw model, of Otsu's threshold (when the study ran it) and of arm '{arm}', "
            "repeat 0, at each size: yellow contours; "
            "ground truth: cyan contour. Each prediction panel shows its Dice on that image.")
    info = client.get_run(parent.run_id).info
    page = _page(report, parent.params, (info.start_time, info.end_time), _runs_table(study), figs, overlay_grid,
                 note)
    files["report.html"] = folder / "report.html"
    files["report.html"].write_text(page, encoding="utf-8")
    tracking.log_report(client.tracking_uri, parent.run_id, folder)
    return report


def _ui_hint(report: Report) -> str:
    """Where to see the study's parent run in MLflow's UI, opened in model-training mode (``schema``)."""
    path = f"#/experiments/{report.experiment_id}/runs/{report.parent_run_id}?{schema.UI_MODEL_TRAINING_QUERY}"
    uri = redact(report.tracking_uri)
    if uri.startswith(("http://", "https://")):
        return f"Browse the runs at {uri.rstrip('/')}/{path}"
    return (f"Browse the runs: mlflow ui --backend-store-uri {uri}  "
            f"then open {schema.DEFAULT_UI}/{path}")


def _verdict(verdict: str) -> str:
    return verdict.upper() if verdict == summary.NO else verdict


def text_summary(report: Report) -> str:
    """A short terminal summary: mean Dice [95% CI] per arm × size × dataset, the champion, the findings (with
    their verdict without the flagged runs where that differs), where the report is."""
    table = report.summary
    table = table.assign(cell=[f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                               zip(table["mean"], table["ci_low"], table["ci_high"])])
    pivot = table.pivot(index=["arm", "n_images"], columns="dataset", values="cell").reset_index()
    pivot = pivot.sort_values(["arm", "n_images"], key=summary.arm_first).rename(columns={"n_images": "n"})
    pivot.columns.name = None
    claims = []
    for r in report.findings.itertuples():
        claims.append(f"  [{_verdict(r.verdict)}] {r.claim}: {r.evidence}")
        if r.evidence_without_flagged != r.evidence:
            claims.append(f"      without the flagged runs: [{_verdict(r.verdict_without_flagged)}] "
                          f"{r.evidence_without_flagged}"
                          + ("" if r.agrees else "  <- the verdicts DISAGREE: a flagged run carries this finding"))
    flagged = [f"  {r.arm} n={r.n_images} repeat {r.repeat}, {r.dataset}: {r.reason}"
               for r in report.degenerate.itertuples()]
    return "\n".join([
        f"Study {report.study_id} (parent run {report.parent_run_id}): {report.tidy['run_id'].nunique()} runs",
        "Mean test Dice [95% crossed bootstrap CI: repeats × test images]:",
        pivot.to_string(index=False),
        f"Champion: {report.champion.sentence()}",
        "Findings:",
        f"  {_flagged_note(report)}",
        *claims,
        *(["Runs flagged as degenerate on test images:", *flagged] if flagged else []),
        *(["Learning curve (Dataset 2, without flagged runs):", *(f"  {line}" for answer in report.curves
                                                                   for line in answer.sentences())]
          if report.curves else []),
        f"Report: {report.html} (also logged on the parent run under report/)",
        _ui_hint(report),
    ])
