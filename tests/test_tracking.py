"""What a run looks like in MLflow 3 (issue 14): a named experiment opened as model training, dataset inputs with
scores linked to them, system metrics, a logged model named after its run, descriptions, pinned requirements."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from segft.config import BaseConfig, ModelConfig, SplitConfig, TrackingConfig, TrainConfig
from segft.data.split import load_data, split_study
from segft.data.synthetic import make_microtube_study, write_study
from segft.runs import run_base

pytestmark = pytest.mark.slow


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


def test_runs_go_to_the_segft_experiment_opened_as_model_training(base_run):
    client, run, _ = base_run
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "segft"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Dataset 2" in experiment.tags["mlflow.note.content"]


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


def test_system_metrics_are_logged_by_default(base_run):
    _, run, _ = base_run
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    assert any(key.startswith("system/system_memory_usage") for key in run.data.metrics)


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


def test_experiment_and_system_metrics_are_settings(store, tiny_data):
    result = run_base(BaseConfig(train=tiny_train(tiny_data),
                                 tracking=TrackingConfig(experiment="my-lab", system_metrics=False)))
    run = store.get_run(result.run_id)
    assert store.get_experiment(run.info.experiment_id).name == "my-lab"
    assert not [key for key in run.data.metrics if key.startswith("system/")]
