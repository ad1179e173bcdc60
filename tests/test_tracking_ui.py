"""What MLflow's UI can show of a run (issue 23 item 5): dataset inputs with a profile and a schema, child runs whose
source names the command, system metrics on the parent only, a logged model linked to its training data. Fast: a
real SQLite store, no training; the UI screenshot is slow."""

from __future__ import annotations

import json
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from segft import schema, tracking
from test_study import chromium, mlflow_server  # noqa: F401 - fixtures: `mlflow server` on loopback, Chromium


def images_and_masks() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three images: two 4 x 5 uint16 (foreground 4 of 20 pixels, and none), one 3 x 3 uint8 (all foreground)."""
    images = [np.zeros((4, 5), np.uint16), np.ones((4, 5), np.uint16), np.zeros((3, 3), np.uint8)]
    masks = [np.eye(4, 5, dtype=bool), np.zeros((4, 5), bool), np.ones((3, 3), bool)]
    return images, masks


def training_input(source: str = "synthetic:microtubes") -> tracking.DatasetInput:
    images, masks = images_and_masks()
    return tracking.DatasetInput(schema.input_name(schema.DATASET1, "train"), schema.TRAINING_CONTEXT, source,
                                 "0123456789abcdef", 3, tracking.DatasetProfile.of(images, masks))


def test_a_profile_counts_images_sizes_dtypes_and_foreground():
    profile = tracking.DatasetProfile.of(*images_and_masks())
    assert profile.as_dict() == {"images": 3, "sizes": {"4x5": 2, "3x3": 1}, "dtypes": {"uint16": 2, "uint8": 1},
                                 "foreground_fraction": round(13 / 49, 4),
                                 "foreground_fraction_per_image": "0.0 to 1.0"}
    assert tracking.DatasetProfile.of([], []).images == 0


@pytest.mark.parametrize("dtypes, pixel", [
    (["uint8"], "long"), (["uint16", "uint8"], "long"), (["float32"], "float"), (["float64", "uint8"], "double"),
])
def test_the_schema_is_a_record_of_name_image_and_mask(dtypes, pixel):
    images = [np.zeros((2, 2), dtype) for dtype in dtypes]
    specs = tracking.DatasetProfile.of(images, [np.zeros((2, 2), bool)] * len(images)).schema().to_dict()
    assert [(spec["name"], spec["type"]) for spec in specs] == [("name", "string"), ("image", "array"),
                                                                 ("mask", "array")]
    assert specs[1]["items"]["items"]["type"] == pixel and specs[2]["items"]["items"]["type"] == "boolean"


def test_a_logged_dataset_input_has_the_profile_and_schema_the_drawer_shows(store, tmp_path):
    tracking.use_experiment("segft", False, "datasets")
    with tracking.start_run("base", {}) as run:
        tracking.log_inputs([training_input(str(tmp_path))])
    (logged,) = store.get_run(run.info.run_id).inputs.dataset_inputs
    profile = json.loads(logged.dataset.profile)
    assert profile["images"] == 3 and profile["sizes"] == {"4x5": 2, "3x3": 1}
    assert profile["dtypes"] == {"uint16": 2, "uint8": 1} and profile["foreground_fraction"] == round(13 / 49, 4)
    colspec = json.loads(logged.dataset.schema)["mlflow_colspec"]  # the drawer's Schema table reads this key
    assert [spec["name"] for spec in colspec] == ["name", "image", "mask"]
    assert {tag.key: tag.value for tag in logged.tags}["images"] == "3"
    assert str(tmp_path) in logged.dataset.source and logged.dataset.digest == "0123456789abcdef"


def test_runs_name_the_segft_command_as_their_source_children_too(store, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/lib/segft/__main__.py", "study", "--preset", "quick"])
    tracking.use_experiment("segft", False, "sources")
    with tracking.start_run("study-s1", {}) as parent:
        with tracking.start_run("base", {}, nested=True) as nested:
            pass
    with tracking.start_run("finetune", {}, parent_run_id=parent.info.run_id) as task:  # a Ray task's run
        pass
    for run in (parent, nested, task):
        tags = store.get_run(run.info.run_id).data.tags
        assert (tags[MLFLOW_SOURCE_NAME], tags[MLFLOW_SOURCE_TYPE]) == ("segft study", "LOCAL"), run.info.run_name
        assert MLFLOW_PROJECT_ENTRY_POINT not in tags  # that one says `mlflow run` opened the run


def test_under_mlflow_run_children_name_the_project_entry_point(store, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/lib/segft/__main__.py", "study"])
    experiment_id = tracking.use_experiment("segft", False, "sources")
    project = {MLFLOW_SOURCE_NAME: "file:///work/segft-project", MLFLOW_SOURCE_TYPE: "PROJECT",
               MLFLOW_PROJECT_ENTRY_POINT: "study", "mlflow.source.git.commit": "abc123"}
    handed_over = store.create_run(experiment_id, tags=project).info.run_id  # as `mlflow run` creates it
    monkeypatch.setenv("MLFLOW_RUN_ID", handed_over)
    with tracking.start_run("study-s1", {}) as parent:
        with tracking.start_run("base", {}, nested=True) as child:
            pass
    assert parent.info.run_id == handed_over
    assert {key: store.get_run(child.info.run_id).data.tags[key] for key in project} == project
    assert {key: store.get_run(handed_over).data.tags[key] for key in project} == project


def test_a_run_of_another_program_keeps_mlflows_source(store, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/somewhere/train.py", "study"])
    tracking.use_experiment("segft", False, "sources")
    with tracking.start_run("mine", {}) as run:
        pass
    assert store.get_run(run.info.run_id).data.tags[MLFLOW_SOURCE_NAME] == "/somewhere/train.py"


def test_system_metrics_are_logged_on_the_parent_not_on_its_children(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    tracking.use_experiment("segft", True, "system metrics")
    with tracking.start_run("study-s1", {}) as parent:
        with tracking.start_run("base", {}, nested=True) as child:
            deadline = time.time() + 2.5
            while time.time() < deadline:  # keep a CPU busy: the parent's second sample reads more than 0 %
                sum(range(10_000))
    parent_metrics = store.get_run(parent.info.run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in parent_metrics), sorted(parent_metrics)
    assert not [key for key in store.get_run(child.info.run_id).data.metrics if key.startswith("system/")]
    cpu = store.get_metric_history(parent.info.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and max(metric.value for metric in cpu) > 0, [metric.value for metric in cpu]


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_registered_models_logged_model_lists_its_training_data(store):
    tracking.use_experiment("segft", False, "lineage")
    train = training_input()
    test = tracking.DatasetInput(schema.input_name(schema.DATASET2, "test"), schema.TEST_CONTEXT, "synthetic:x",
                                 "fedcba9876543210", 2)
    with tracking.start_run("base", {}) as run:
        tracking.log_inputs([train, test])
        for epoch, loss in enumerate([0.9, 0.4]):
            tracking.log_epoch(epoch, loss, {})
        model_id = tracking.log_model({"python_model": Echo(), "pip_requirements": []}, "base")
        tracking.log_evaluation(pd.DataFrame(), {test: {"test_dice_dataset2": 0.5}}, {}, model_id)
        model_uri, version = tracking.register_model(model_id, "segft-base", {}, "a base model", "base models")
    assert store.get_model_version("segft-base", version).source == f"models:/{model_id}"
    used = {(m.key, m.dataset_name, m.dataset_digest, m.value) for m in store.get_logged_model(model_id).metrics
            if m.dataset_name}  # "Datasets used" lists these metrics' datasets
    assert used == {("final_train_loss", train.name, train.digest, 0.4),
                    ("test_dice_dataset2", test.name, test.digest, 0.5)}
    assert [m.value for m in store.get_metric_history(run.info.run_id, "train_loss")] == [0.9, 0.4]


# ---- in a real browser: the dataset drawer of a run logged into an `mlflow server` (slow: a server and Chromium)

@pytest.mark.slow
def test_the_dataset_drawer_shows_the_profile_and_schema(mlflow_server, chromium, tmp_path, monkeypatch):
    from test_study import SCREENSHOTS, _wait

    monkeypatch.setattr("sys.argv", ["/venv/bin/segft", "base"])  # the run's Source then reads "segft base"
    mlflow.set_tracking_uri(mlflow_server)
    try:
        experiment_id = tracking.use_experiment("segft", False, "datasets")
        with tracking.start_run("base", {}) as run:
            tracking.log_inputs([training_input(str(tmp_path))])
    finally:
        mlflow.set_tracking_uri(None)
    body = lambda b: b.find_element("tag name", "body").text  # noqa: E731
    chromium.get(f"{mlflow_server}/#/experiments/{experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning")
    _wait(chromium, lambda b: "dataset1-train" in body(b))
    chromium.execute_script(
        "const hits = [...document.querySelectorAll('button, a, span, div')].filter(e => e.innerText &&"
        " e.innerText.trim().startsWith('dataset1-train') && e.children.length <= 3);"
        "hits[hits.length - 1].click();")
    _wait(chromium, lambda b: "foreground fraction" in body(b) and "mask" in body(b))
    chromium.save_screenshot(str(SCREENSHOTS / "mlflow-dataset-drawer.png"))
    text = body(chromium)
    assert "No profile available" not in text and "No schema available" not in text
    assert "images: 3" in text and "uint16" in text and "4x5" in text and "segft base" in text


@pytest.mark.slow
def test_through_mlflow_run_a_studys_child_runs_name_its_project_and_entry_point(tmp_path):
    """The real path: ``mlflow run -e study`` hands its run over; the study's children (a base and a finetune run)
    name the project and entry point as it does, and only the parent logs system metrics."""
    from segft.data.synthetic import make_microtube_study, write_study
    from test_project import TINY, mlflow_run

    data = write_study(make_microtube_study(n_images=5), tmp_path / "data")
    try:
        client, runs = mlflow_run(tmp_path, [("study", {"preset": "quick", "sizes": "1", "repeats": "1",
                                                        "arms": "finetune", "system_metrics": "true"})],
                                  {**TINY, "data_dir": str(data)})
    finally:
        mlflow.set_tracking_uri(None)
    (parent,) = [run for run in runs if run.data.tags.get(schema.ROLE_TAG) == schema.ROLE_STUDY]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {run.data.tags[schema.ROLE_TAG] for run in children} == {"base", "finetune"}
    source = {key: parent.data.tags[key] for key in (MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_PROJECT_ENTRY_POINT)}
    assert source[MLFLOW_SOURCE_TYPE] == "PROJECT" and source[MLFLOW_PROJECT_ENTRY_POINT] == "study"
    for child in children:
        assert {key: child.data.tags.get(key) for key in source} == source, child.info.run_name
        assert not [key for key in child.data.metrics if key.startswith("system/")], child.info.run_name
    assert any(key.startswith("system/") for key in client.get_run(parent.info.run_id).data.metrics)
