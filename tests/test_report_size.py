"""A light report (issue 14): the quickstart study's report stays one self-contained page under 4 MB.

The fake study here has the quickstart's shape: test images of 558 × 136 px drawn by the built-in synthetic data
(its noise is what makes a grid heavy; the fake store's smooth gradients would compress to nothing), two per
dataset in the grid, and eight grid columns (the quickstart's Original | Raw | Threshold | 5 | 10 | 15 | 20 |
Ground truth; here five sizes stand in for Threshold and four sizes).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import plotly.offline
import pytest
from conftest import FakeStudyDesign
from mlflow import MlflowClient

from analysis import grid
from analysis.report import GRID_FILE, build_report
from segft.config import ReportConfig
from segft.data.synthetic import HEIGHT, WIDTH, make_microtube_study
from segft.schema import study_image_path

MAX_REPORT_BYTES = 4_000_000


@pytest.fixture
def fake_study_design() -> FakeStudyDesign:
    return FakeStudyDesign(sizes=(5, 10, 15, 20, 25), arms=("finetune",), shape=(HEIGHT, WIDTH))


@pytest.fixture
def quickstart_like_report(fake_study_store, fake_study_design, tmp_path):
    """The report of the fake study after its test images were replaced by synthetic microscope images."""
    data = make_microtube_study(seed=0)
    folder = tmp_path / "synthetic_test_images"
    for dataset in (data.dataset1, data.dataset2):
        for index, name in enumerate(fake_study_design.images):
            path = folder / study_image_path(dataset.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), dataset.images[25 + index])  # the quickstart's test images are 26-31
    MlflowClient(fake_study_store.tracking_uri).log_artifacts(fake_study_store.parent_run_id, str(folder))
    return build_report(ReportConfig(tracking_uri=fake_study_store.tracking_uri,
                                     report_dir=str(tmp_path / "report"), grid_images=2))


def packed_plotly(page: str) -> list[str]:
    return re.findall(r'<script id="plotly-js-gzip" type="application/gzip;base64">([A-Za-z0-9+/=]+)</script>',
                      page)


def test_report_is_under_4_mb_with_one_plotly_js_and_a_jpeg_grid(quickstart_like_report):
    report = quickstart_like_report
    page = report.html.read_text(encoding="utf-8")
    assert report.html.stat().st_size < MAX_REPORT_BYTES, f"report.html is {report.html.stat().st_size:,} bytes"

    plotly_js = plotly.offline.get_plotlyjs()
    (packed,) = packed_plotly(page)  # plotly.js once, packed; never a plain copy beside it, never a CDN
    assert gzip.decompress(base64.b64decode(packed)).decode() == plotly_js
    assert plotly_js[:2000] not in page and "cdn.plot.ly" not in page
    assert page.count("drawFigure(") == 1 + 2  # its definition and the two figures

    (jpeg,) = re.findall(r'<img class="grid" alt="[^"]*" src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    inline = cv2.imdecode(np.frombuffer(base64.b64decode(jpeg), np.uint8), cv2.IMREAD_COLOR)
    full = cv2.imread(str(report.files[GRID_FILE]))
    assert inline.shape[0] * inline.shape[1] <= grid.INLINE_PIXELS < full.shape[0] * full.shape[1]
    assert f'<a href="{GRID_FILE}">' in page  # the full-resolution grid beside the page


#: Runs the page's scripts in node with a stand-in document that records what plotly would draw.
HARNESS = """
const elements = {"plotly-js-gzip": {textContent: PACKED}};
const drawn = [];
globalThis.document = {
  getElementById: id => elements[id] || (elements[id] = {id, textContent: ""}),
  createElement: () => ({}),
  head: {appendChild: script => {
    if (!script.textContent.includes("Plotly")) throw new Error("not plotly.js");
    globalThis.Plotly = {newPlot: (id, data, layout) => drawn.push([id, data.length, layout.title.text])};
  }},
};
PAGE_SCRIPTS
setTimeout(() => console.log(JSON.stringify(drawn)), 2000);
"""


def test_packed_plotly_unpacks_and_draws_in_a_javascript_engine(fake_study_store, tmp_path):
    """The page's loader, run by node (whose atob, Blob, DecompressionStream and Response are the browser's APIs)
    with a stand-in document: it must unpack plotly.js and draw each figure."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    report = build_report(ReportConfig(tracking_uri=fake_study_store.tracking_uri, report_dir=str(tmp_path)))
    page = report.html.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    harness = HARNESS.replace("PACKED", json.dumps(packed_plotly(page)[0])).replace("PAGE_SCRIPTS", "\n".join(scripts))
    (tmp_path / "harness.js").write_text(harness)
    completed = subprocess.run(["node", str(tmp_path / "harness.js")], capture_output=True, text=True, timeout=60,
                               check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    drawn = json.loads(completed.stdout)
    assert len(drawn) == 2 and all(traces > 0 and title for _, traces, title in drawn)
