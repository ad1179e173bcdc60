"""The base and finetune runs in-process: lineage, failures and bad input against a real temporary MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from segft import cli
from segft.config import BaseConfig, FinetuneConfig, ModelConfig, SplitConfig, TrainConfig
from segft.data.synthetic import make_microtube_study, write_study
from segft.runs import run_base, run_finetune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=4), tmp_path_factory.mktemp("data") / "study")


def tiny_train(data_dir: Path) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data_dir), epochs=1, batch_size=16, lr=1e-3, patch_size=64,
        model=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
        split=SplitConfig(dataset1_train_images=3, dataset2_pool_images=3),
    )


def all_runs(client: MlflowClient):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_finetune_without_base_trains_one_first_as_its_own_run(store, tiny_data):
    result = run_finetune(FinetuneConfig(train=tiny_train(tiny_data), n_images=2))
    runs = {run.data.tags["segft.role"]: run for run in all_runs(store)}
    assert set(runs) == {"base", "finetune"}
    assert runs["finetune"].info.run_id == result.run_id
    assert runs["finetune"].data.params["base_run_id"] == runs["base"].info.run_id
    assert store.get_model_version("segft-base", "1").run_id == runs["base"].info.run_id
    # a second fine-tuning reuses the registered base model instead of training another
    run_finetune(FinetuneConfig(train=tiny_train(tiny_data), n_images=3))
    assert len(store.search_model_versions("name = 'segft-base'")) == 1
    assert len(store.search_model_versions("name = 'segft-finetuned'")) == 2


def test_a_run_that_crashes_is_marked_failed(store, tiny_data, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash during evaluation")

    monkeypatch.setattr("segft.runs.evaluate", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_base(BaseConfig(train=tiny_train(tiny_data)))
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"


@pytest.mark.parametrize(
    "make_bad_data, message",
    [
        (lambda root: None, "folder not found"),
        (lambda root: (root / "dataset2" / "masks" / "002.png").unlink(), "002"),
        (lambda root: (root / "dataset1" / "images" / "003.png").write_bytes(b"not a png"), "003.png"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_run(store, tmp_path, capsys, make_bad_data, message):
    root = tmp_path / "study"
    if message != "folder not found":  # the first case leaves the data folder missing altogether
        write_study(make_microtube_study(n_images=4), root)
        make_bad_data(root)
    status = cli.main(["base", "--data-dir", str(root), "--epochs", "1", "--dataset1-train-images", "3",
                       "--dataset2-pool-images", "3"])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.startswith("segft: error:") and message in error and "\n" not in error
    assert all_runs(store) == []


def test_too_few_pool_images_for_n_images_is_refused_before_any_run(store, tiny_data, capsys):
    status = cli.main(["finetune", "--data-dir", str(tiny_data), "--n-images", "4",
                       "--dataset1-train-images", "3", "--dataset2-pool-images", "3"])
    assert status == 2
    assert "n_images=4" in capsys.readouterr().err
    assert all_runs(store) == []
