"""A small study run into a real ``mlflow server`` on loopback, resumed, and read back by the analysis."""

from __future__ import annotations

import html.parser
import os
import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import free_port, loopback_process
from analysis.report import build_report, text_summary
from segft.config import ReportConfig, StudyConfig
from segft.data.synthetic import make_microtube_study, write_study
from segft.presets import preset_train_config
from segft.plan import draw_pool_indices, plan_runs
from segft.study import run_study

pytestmark = pytest.mark.slow

SIZES, REPEATS, ARMS = (1, 2), 2, ("finetune", "scratch", "threshold")
TRAINED = [arm for arm in ARMS if arm != "threshold"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a SQLite backend on a loopback port, in its own process group (it starts helper
    processes), ended as a whole group."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with loopback_process(command, f"http://127.0.0.1:{port}/health", root / "server.log", timeout=120, cwd=root):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def study(mlflow_server, tmp_path_factory):
    """A tiny study (2 base models + threshold + 2 sizes x 2 repeats x 2 arms = 11 runs), then the same study
    started again."""
    work = tmp_path_factory.mktemp("study")
    data = write_study(make_microtube_study(n_images=5), work / "data")
    train = preset_train_config("quick", {
        "data_dir": str(data), "epochs": 1, "patch_size": 64, "decoder_channels": (16, 8, 8, 4),
        "dataset1_train_images": 3, "dataset2_pool_images": 3,
    })
    config = StudyConfig(train=train, sizes=SIZES, repeats=REPEATS, arms=ARMS, report_dir=str(work / "report"))
    mlflow.set_tracking_uri(mlflow_server)
    previous_cwd = os.getcwd()
    os.chdir(work)  # nothing of the study may land in the checkout
    try:
        first = run_study(config)
        second = run_study(config)
    finally:
        os.chdir(previous_cwd)
        mlflow.set_tracking_uri(None)
    report = build_report(ReportConfig(tracking_uri=mlflow_server, study_id=first.study_id,
                                       report_dir=str(work / "report")))
    return config, first, second, report, MlflowClient(mlflow_server)


def test_study_runs_hang_under_one_parent(study):
    config, first, _, _, client = study
    children = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`segft.study_id` = '{first.study_id}' and tags.`segft.role` != 'study'",
    )
    assert len(children) == REPEATS + 1 + len(SIZES) * REPEATS * len(TRAINED)  # a base model per repeat
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {first.parent_run_id}
    assert sorted(first.runs) == sorted(["base/r0", "base/r1", "threshold"] + [p.key for p in plan_runs(config, 3)])
    bases = [run for run in children if run.data.tags["segft.role"] == "base"]
    assert sorted(run.data.params["seed"] for run in bases) == ["0", "1"]  # each repeat's own seed
    assert len({run.data.params["base_key"] for run in bases}) == REPEATS
    finetuned = [run for run in children if run.data.tags.get("segft.arm") == "finetune"]
    base_of = {run.data.tags["segft.model_uri"]: run.data.params["repeat"] for run in bases}
    assert all(base_of[run.data.params["base_model_uri"]] == run.data.params["repeat"] for run in finetuned)
    # the parent's headline numbers: each arm's and size's mean test Dice over the repeats
    headline = client.get_run(first.parent_run_id).data.metrics
    dice = [client.get_run(first.runs[f"finetune/n2/r{r}"].run_id).data.metrics["test_dice_dataset2"]
            for r in range(REPEATS)]
    assert headline[schema.headline_metric("finetune", 2, "dataset2")] == pytest.approx(sum(dice) / REPEATS)
    assert {schema.headline_metric("raw", 0, "dataset1"), schema.headline_metric("threshold", 0, "dataset2")} <= set(
        headline)


def test_threshold_polarity_is_chosen_on_training_and_pool_images(study):
    _, first, _, _, client = study
    params = client.get_run(first.runs["threshold"].run_id).data.params
    assert params["threshold_polarity_chosen_on_dataset1"] == "dataset1_train"  # never the test images
    assert params["threshold_polarity_chosen_on_dataset2"] == "dataset2_pool"
    assert {params["threshold_polarity_dataset1"], params["threshold_polarity_dataset2"]} <= {"bright", "dark"}


def test_every_run_logs_its_foreground_ratio(study):
    _, first, _, _, client = study
    for key, result in first.runs.items():
        metrics = client.get_run(result.run_id).data.metrics
        assert {"test_fg_ratio_dataset1", "test_fg_ratio_dataset2"} <= set(metrics), key
        validation = {f"val_{name}_{dataset}" for name in ("dice", "fg_ratio") for dataset in ("dataset1", "dataset2")}
        assert validation <= set(metrics) if key.startswith("finetune") else not validation & set(metrics), key


def test_every_finetune_run_is_scored_on_the_same_selection_images_and_the_parent_says_why_its_champion(study):
    _, first, _, _, client = study
    for key in (k for k in first.runs if k.startswith("finetune")):  # n=2 uses the whole pool of 3, and is scored
        params = client.get_run(first.runs[key].run_id).data.params
        assert params["split_dataset2_validation"] == params["split_dataset2_pool"], key
        assert params["split_dataset1_validation"] == params["split_dataset1_train"], key
        table = first.runs[key].val_table
        assert sorted(table["dataset"].value_counts().items()) == [("dataset1", 3), ("dataset2", 3)], key
    tags = client.get_run(first.parent_run_id).data.tags
    reason = tags["segft.champion_reason"]
    if first.champion:
        assert tags["segft.champion"] == first.champion
        champion = next(k for k, r in first.runs.items() if r.model_uri == first.champion)
        assert reason.startswith(f"{champion}: ")
    else:
        assert reason.startswith("no champion: ")


def test_starting_the_study_again_reuses_every_finished_run(study):
    _, first, second, _, _ = study
    assert second.study_id == first.study_id and second.parent_run_id == first.parent_run_id
    assert set(second.reused) == set(first.runs)
    assert {key: r.run_id for key, r in second.runs.items()} == {key: r.run_id for key, r in first.runs.items()}


def test_repeats_draw_nested_subsets_and_repeat_zero_takes_the_first_images():
    assert draw_pool_indices(20, (5, 10, 15, 20), 0, seed=0, resample=True)[5] == (0, 1, 2, 3, 4)
    drawn = draw_pool_indices(20, (5, 10, 15, 20), 1, seed=0, resample=True)
    assert set(drawn[5]) < set(drawn[10]) < set(drawn[15]) < set(drawn[20]) == set(range(20))
    assert drawn[5] != (0, 1, 2, 3, 4)
    assert draw_pool_indices(20, (5,), 2, seed=0, resample=False)[5] == (0, 1, 2, 3, 4)


def test_report_table_has_a_row_per_run_and_test_image(study):
    _, first, _, report, _ = study
    tidy = pd.read_csv(report.directory / "tidy.csv")
    assert len(tidy) == len(first.runs) * 2 * 2  # runs x datasets x 2 test images each
    assert set(tidy["arm"]) == {"raw", *ARMS}
    assert {"tp", "fp", "fn", "prediction_digest"} <= set(tidy.columns)


def test_report_confidence_intervals_contain_the_mean(study):
    _, _, _, report, _ = study
    summary = pd.read_csv(report.directory / "summary.csv")
    assert (summary["ci_low"] <= summary["mean"] + 1e-12).all() and (summary["mean"] <= summary["ci_high"] + 1e-12).all()


def test_report_files_and_html_without_network_resources(study):
    _, first, _, report, client = study
    folder = report.directory
    for name in ("report.html", "tidy.csv", "summary.csv", "paired_change.csv", "grid.png"):
        assert (folder / name).is_file(), name

    class Resources(html.parser.HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag, attrs):
            for key, value in attrs:
                if key in ("src", "href") and value and value.startswith(("http:", "https:", "//")):
                    self.found.append(f"{tag} {key}={value}")

    parser = Resources()
    parser.feed((folder / "report.html").read_text())
    assert parser.found == []
    logged = {f.path for f in client.list_artifacts(first.parent_run_id, "report")}
    assert "report/report.html" in logged
    assert "study" in text_summary(report).lower()


# ------------------------------------------------------------------------------ in a real browser (issue 14)

#: Where the browser test leaves its screenshots (ignored by git; CI may keep the folder as an artifact).
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium from the distribution's packages (``chromium``, ``chromium-driver``), driven by Selenium
    with the driver on PATH: nothing is downloaded at run time."""
    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("no Chromium here: install the distribution's chromium and chromium-driver packages (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.quit()


def _wait(browser, condition, timeout: float = 60):
    """Wait for ``condition``; on a timeout, keep a screenshot of what the page showed instead."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.5).until(condition)
    except TimeoutException:
        browser.save_screenshot(str(SCREENSHOTS / "timeout.png"))
        text = browser.find_element("tag name", "body").text
        raise AssertionError(f"the page at {browser.current_url} did not show what was expected: {text[:1500]}")


def test_the_report_draws_its_figures_and_grid_in_a_browser_without_errors(study, chromium):
    _, _, _, report, _ = study
    chromium.get((report.directory / "report.html").as_uri())
    traces = _wait(chromium, lambda b: b.execute_script(
        "const plots = [...document.querySelectorAll('.js-plotly-plot')];"
        "return plots.length && plots.every(p => p._fullData && p._fullData.length) ? plots.map(p => p._fullData.length)"
        " : false;"))
    assert len(traces) >= 2 and min(traces) >= 1  # Dice against images, and the forgetting plot
    grid = chromium.execute_script("return [...document.images].filter(i => i.src.startsWith('data:image/'))"
                                   ".map(i => i.complete && i.naturalWidth > 0);")
    assert grid and all(grid)
    chromium.save_screenshot(str(SCREENSHOTS / "report.png"))
    errors = [entry for entry in chromium.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_the_report_is_the_studys_record_in_a_browser(study, chromium):
    """The settings table has no empty value, the champion is named, the machine and the code version are there,
    and no table makes the page wider than the window."""
    config, first, _, report, _ = study
    chromium.get((report.directory / "report.html").as_uri())
    cells = _wait(chromium, lambda b: b.execute_script(
        "const t = document.getElementById('settings-table');"
        "return t ? [...t.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim())) : false;"))
    assert len(cells) > 40 and all(all(cell for cell in row) for row in cells)
    settings = {row[1]: row for row in cells}
    assert settings["epochs"][2:] == ["1", "given"] and settings["preset"][2] == config.preset
    facts = dict(chromium.execute_script(
        "return [...document.getElementById('record-table').querySelectorAll('tbody tr')]"
        ".map(r => [r.cells[0].innerText, r.cells[1].innerText]);"))
    assert facts["preset"] == config.preset and "(not recorded)" not in facts.values()
    assert facts["CPU"].startswith(machine.this_machine().cpu_model)
    assert facts["segft version"] == machine.code_version().version and facts["torch"] == torch.__version__
    champion = chromium.execute_script(
        "const h = [...document.querySelectorAll('h2')].find(h => h.innerText === 'Champion');"
        "return h.nextElementSibling.innerText;")
    assert (first.champion in champion) if first.champion else champion.startswith("none.")
    assert chromium.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;")
    chromium.save_screenshot(str(SCREENSHOTS / "report-record.png"))


def test_the_mlflow_ui_shows_the_study_as_model_training_runs_with_datasets_and_named_models(study, mlflow_server,
                                                                                             chromium):
    """The link the study's summary prints opens the experiment's runs in model-training mode: MLflow 3.17's UI
    otherwise starts in GenAI mode whatever the experiment's kind tag says (a global toggle kept in the browser)."""
    from segft import schema

    _, first, _, report, client = study
    parent = client.get_run(first.parent_run_id)
    assert f"/runs/{first.parent_run_id}?{schema.UI_MODEL_TRAINING_QUERY}" in text_summary(report)
    link = f"{mlflow_server}/#/experiments/{parent.info.experiment_id}?{schema.UI_MODEL_TRAINING_QUERY}"
    body = lambda b: b.find_element("tag name", "body").text  # noqa: E731
    chromium.get(link)
    _wait(chromium, lambda b: f"study-{first.study_id}" in body(b) and "Dataset" in body(b))
    assert "/runs" in chromium.current_url
    chromium.save_screenshot(str(SCREENSHOTS / "mlflow-runs.png"))
    run_id = first.runs["finetune/n1/r0"].run_id
    chromium.get(f"{mlflow_server}/#/experiments/{parent.info.experiment_id}/runs/{run_id}?workflowType=machine_learning")
    _wait(chromium, lambda b: all(text in body(b) for text in ("dataset2-train", "System metrics", "Test Dice")))
    chromium.save_screenshot(str(SCREENSHOTS / "mlflow-run.png"))
    chromium.get(f"{mlflow_server}/#/experiments/{parent.info.experiment_id}/models?workflowType=machine_learning")
    _wait(chromium, lambda b: "finetune-n1-r0" in body(b) and "base-r0" in body(b))
    chromium.save_screenshot(str(SCREENSHOTS / "mlflow-models.png"))


# ------------------------------------------------------------------------------ threads, machine and code (issue 20)

import dataclasses  # noqa: E402

import torch  # noqa: E402

from segft import machine, schema  # noqa: E402
from segft.config import ExecutorConfig  # noqa: E402
from segft.study import study_id  # noqa: E402


def test_every_run_logs_its_thread_count_cpu_and_code_version(study):
    """Every trained run and the parent log the same resolved thread count (the fixture leaves ``threads`` 0);
    every run, the threshold arm included, logs the CPU and the code version."""
    _, first, _, _, client = study
    facts = machine.run_params()
    threads = set()
    for key, run_id in [("study", first.parent_run_id), *((k, r.run_id) for k, r in first.runs.items())]:
        params = client.get_run(run_id).data.params
        assert {name: params.get(name, "") for name in facts} == facts, key
        if key != schema.THRESHOLD_ARM:
            threads.add(params[schema.THREADS_PARAM])
    assert len(threads) == 1 and int(threads.pop()) >= 1  # resolved once, by the study, for every run


def _study_config(**train) -> StudyConfig:
    return StudyConfig(train=preset_train_config("quick", train))


def test_study_id_keys_the_resolved_thread_count_not_the_executor():
    digest = "0123456789abcdef"
    here = study_id(_study_config(), digest)
    assert here == study_id(_study_config(threads=torch.get_num_threads()), digest)  # 0 resolved in process
    assert here != study_id(_study_config(threads=torch.get_num_threads() + 1), digest)
    ray = ExecutorConfig(executor="ray", cpus_per_run=2.5)
    on_ray = dataclasses.replace(_study_config(), execution=ray)
    assert study_id(on_ray, digest) == study_id(_study_config(threads=2), digest)  # a resume on Ray, same count
    assert study_id(dataclasses.replace(_study_config(threads=5), execution=ray), digest) == study_id(
        _study_config(threads=5), digest)


def test_study_id_keys_the_code_version_but_not_uncommitted_changes(monkeypatch):
    digest = "0123456789abcdef"
    monkeypatch.setattr(machine, "code_version", lambda: machine.CodeVersion("0.1.0", "a" * 40))
    committed = study_id(_study_config(), digest)
    monkeypatch.setattr(machine, "code_version", lambda: machine.CodeVersion("0.1.0", "a" * 40, dirty=True))
    assert study_id(_study_config(), digest) == committed
    for other in (machine.CodeVersion("0.1.0", "b" * 40), machine.CodeVersion("0.2.0", "a" * 40)):
        monkeypatch.setattr(machine, "code_version", lambda other=other: other)
        assert study_id(_study_config(), digest) != committed
