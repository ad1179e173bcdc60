"""What a run looks like in MLflow 3 (issue 14): a named experiment opened as model training, dataset inputs with
scores linked to them, system metrics, a logged model named after its run, descriptions, pinned requirements.
And the adapter itself (issue 21): plain data out, MLflow's public API only, no module state (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from segft import schema, tracking
from segft.config import BaseConfig, ModelConfig, SplitConfig, TrackingConfig, TrainConfig
from segft.data.split import load_data, split_study
from segft.data.synthetic import make_microtube_study, write_study
from segft.runs import run_base

#: Tests that train a model.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=4), tmp_path_factory.mktemp("data") / "study")


def tiny_train(data_dir: Path, epochs: int = 1) -> TrainConfig:
    return TrainConfig(data_dir=str(data_dir), epochs=epochs, batch_size=16, lr=1e-3, patch_size=64,
                       model=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
                       split=SplitConfig(dataset1_train_images=3, dataset2_pool_images=3))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_data, empty_sqlite_store):
    """One base run in experiment ``segft`` with system metrics sampled every second."""
    import shutil

    root = tmp_path_factory.mktemp("store")
    shutil.copyfile(empty_sqlite_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    patch.chdir(root)
    mlflow.set_tracking_uri(uri)
    try:
        result = run_base(BaseConfig(train=tiny_train(tiny_data, epochs=12)))  # several 1 s samples
    finally:
        mlflow.set_tracking_uri(None)
        patch.undo()
    client = MlflowClient(uri)
    return client, client.get_run(result.run_id), result


@slow
def test_runs_go_to_the_segft_experiment_opened_as_model_training(base_run):
    client, run, _ = base_run
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "segft"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Dataset 2" in experiment.tags["mlflow.note.content"]


@slow
def test_each_part_of_the_data_is_a_dataset_input_and_scores_link_to_theirs(base_run, tiny_data):
    client, run, _ = base_run
    split = split_study(load_data(str(tiny_data)), SplitConfig(dataset1_train_images=3, dataset2_pool_images=3))
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"dataset1-train", "dataset1-test", "dataset2-test"}
    assert inputs["dataset1-train"].dataset.digest == split.base_train.digest()[:16]
    assert inputs["dataset2-test"].dataset.digest == split.test_dataset2.digest()[:16]
    contexts = {name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in inputs.items()}
    assert contexts == {"dataset1-train": "training", "dataset1-test": "test", "dataset2-test": "test"}
    assert str(tiny_data) in inputs["dataset1-train"].dataset.source
    (logged,) = client.search_logged_models([run.info.experiment_id])
    by_key = {metric.key: metric for metric in logged.metrics}
    dice = by_key["test_dice_dataset2"]
    assert (dice.dataset_name, dice.dataset_digest) == ("dataset2-test", split.test_dataset2.digest()[:16])
    assert by_key["test_dice_dataset1"].dataset_name == "dataset1-test"


@slow
def test_system_metrics_are_logged_by_default(base_run):
    _, run, _ = base_run
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    assert any(key.startswith("system/system_memory_usage") for key in run.data.metrics)


@slow
def test_the_logged_model_is_named_after_its_run_and_the_version_is_described(base_run):
    client, run, result = base_run
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert logged.name == run.info.run_name == "base"
    version = client.get_model_version("segft-base", result.model_uri.rsplit("/", 1)[1])
    assert "Test Dice: dataset1" in version.description and "from random weights" in version.description
    assert version.description == run.data.tags["mlflow.note.content"]
    assert "Dataset 1" in client.get_registered_model("segft-base").description
    assert not {"arm", "run_id"} & set(version.tags), "duplicates of segft.arm and the version's source run"
    assert version.tags["segft.arm"] == "raw" and version.tags["test_dice_dataset1"]


@slow
def test_the_model_pins_the_requirements_it_was_trained_with(base_run):
    import importlib.metadata

    client, _, result = base_run
    mlflow.set_tracking_uri(client._tracking_client.tracking_uri)
    try:
        requirements = Path(mlflow.pyfunc.get_model_dependencies(result.model_uri)).read_text().split()
    finally:
        mlflow.set_tracking_uri(None)
    pinned = dict(line.split("==") for line in requirements if "==" in line)
    assert pinned["torch"] == importlib.metadata.version("torch").split("+")[0]
    assert pinned["mlflow"] == importlib.metadata.version("mlflow")
    assert {"segmentation-models-pytorch", "timm", "numpy"} <= set(pinned)


@slow
def test_experiment_and_system_metrics_are_settings(store, tiny_data):
    result = run_base(BaseConfig(train=tiny_train(tiny_data),
                                 tracking=TrackingConfig(experiment="my-lab", system_metrics=False)))
    run = store.get_run(result.run_id)
    assert store.get_experiment(run.info.experiment_id).name == "my-lab"
    assert not [key for key in run.data.metrics if key.startswith("system/")]


# ---- the adapter: plain data out, MLflow's public API only, no module state


def test_a_resumed_study_reads_its_finished_runs_back_as_plain_data(store):
    tracking.use_experiment("segft", False, "a study")
    with tracking.start_run("study-s1", {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: "s1"}) as parent:
        with tracking.start_run("finetune", {schema.STUDY_TAG: "s1", schema.RUN_KEY_TAG: "finetune/n2/r0"},
                                nested=True) as trained:
            tracking.log_metrics({"test_dice_dataset2": 0.75, "val_dice_dataset2": 0.5})
            tracking.set_model_uri_tag("models:/segft-finetuned/3")
        with tracking.start_run("threshold", {schema.STUDY_TAG: "s1", schema.RUN_KEY_TAG: schema.THRESHOLD_ARM},
                                nested=True) as threshold:
            tracking.log_metrics({"test_dice_dataset2": 0.25})
        with pytest.raises(RuntimeError), tracking.start_run(
                "scratch", {schema.STUDY_TAG: "s1", schema.RUN_KEY_TAG: "scratch/n2/r0"}, nested=True):
            raise RuntimeError("a failed run is not reused")
    assert tracking.finished_study_runs("s1") == {
        "finetune/n2/r0": tracking.FinishedRun(trained.info.run_id, "models:/segft-finetuned/3",
                                               {"test_dice_dataset2": 0.75, "val_dice_dataset2": 0.5}),
        schema.THRESHOLD_ARM: tracking.FinishedRun(threshold.info.run_id, "", {"test_dice_dataset2": 0.25}),
    }
    assert tracking.study_parent_to_resume("s1") == parent.info.run_id
    assert tracking.finished_study_runs("another") == {}


@pytest.mark.parametrize("stop, status, reason", [
    (KeyboardInterrupt, "KILLED", "interrupted (SIGINT or SIGTERM)"),
    (SystemExit, "KILLED", "its process was told to exit"),  # a Ray worker whose cluster is shut down
    (RuntimeError, "FAILED", "RuntimeError"),
])
def test_a_run_stopped_inside_its_block_ends_with_a_status_and_a_reason(store, stop, status, reason):
    tracking.use_experiment("segft", False, "a study")
    with pytest.raises(stop), tracking.start_run("base", {}, new_run=True) as run:
        raise stop()
    ended = store.get_run(run.info.run_id)
    assert ended.info.status == status and ended.data.tags[schema.ERROR_TAG].startswith(reason)


def test_new_runs_and_workers_go_to_the_experiment_use_experiment_chose(store):
    experiment_id = tracking.use_experiment("my-lab", False, "mine")
    assert store.get_experiment(experiment_id).name == "my-lab"
    with tracking.start_run("base", {}, new_run=True) as run:
        assert run.info.experiment_id == experiment_id
        assert tracking.Destination.of_this_process(False).experiment_id == experiment_id


def test_under_mlflow_run_the_handed_over_runs_experiment_stands(store, monkeypatch):
    """``mlflow run --experiment-name theirs`` creates the run, then hands its id and experiment to the command."""
    theirs = store.create_experiment("theirs")
    handed_over = store.create_run(theirs).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", handed_over)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", theirs)
    assert tracking.use_experiment("segft", False, "a study") == theirs
    assert store.get_experiment_by_name("segft") is None
    with tracking.start_run("finetune", {}) as adopted, tracking.start_run("base", {}, nested=True) as child:
        assert adopted.info.run_id == handed_over and child.info.experiment_id == theirs


def test_without_an_experiment_a_destination_is_refused(store):
    with pytest.raises(RuntimeError, match="use_experiment"):
        tracking.Destination.of_this_process(False)


def test_task_tags_tag_the_runs_of_their_block_only(store):
    tracking.use_experiment("segft", False, "a study")
    with tracking.task_tags({schema.RAY_TASK_TAG: "session/task-1"}):
        assert tracking.process_tags()[schema.RAY_TASK_TAG] == "session/task-1"
        with tracking.start_run("inside", {}) as inside:
            pass
    assert schema.RAY_TASK_TAG not in tracking.process_tags()
    with tracking.start_run("after", {}) as after:
        pass
    assert store.get_run(inside.info.run_id).data.tags[schema.RAY_TASK_TAG] == "session/task-1"
    assert schema.RAY_TASK_TAG not in store.get_run(after.info.run_id).data.tags


def test_the_report_is_logged_through_the_adapter_on_the_named_run(store, tmp_path):
    run_id = store.create_run(store.create_experiment("elsewhere")).info.run_id
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<html></html>")
    tracking.log_report(store.tracking_uri, run_id, tmp_path / "report")
    assert [a.path for a in store.list_artifacts(run_id, schema.REPORT_DIR)] == [f"{schema.REPORT_DIR}/report.html"]
