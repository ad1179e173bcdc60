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


# ------------------------------------------------------------------------------ exact base-model reuse (issue 11)

import dataclasses  # noqa: E402

from segft.config import LossConfig  # noqa: E402
from segft.data.split import load_data, split_study  # noqa: E402
from segft.runs import base_key  # noqa: E402

KEY_CHANGES = [  # what differs from tiny_train, as TrainConfig replacements
    ("split", {"split": SplitConfig(dataset1_train_images=2, dataset2_pool_images=3)}),
    ("epochs", {"epochs": 2}),
    ("lr", {"lr": 1e-4}),
    ("seed", {"seed": 1}),
    ("normalization", {"normalization": "deviation"}),
    ("loss", {"loss": LossConfig(loss_scope="patch")}),
    ("arch", {"model": ModelConfig(arch="paulow")}),
    ("encoder", {"model": ModelConfig(encoder="resnet34", encoder_depth=3, decoder_channels=(16, 8, 4))}),
]


@pytest.mark.parametrize("name, change", KEY_CHANGES, ids=[c[0] for c in KEY_CHANGES])
def test_base_key_changes_with_everything_that_defines_a_base_model(tiny_data, name, change):
    config = tiny_train(tiny_data)
    data = load_data(config.data_dir)
    other = dataclasses.replace(config, **change)
    key = base_key(config, split_study(data, config.split), data.digest())
    assert key != base_key(other, split_study(data, other.split), data.digest())
    same = dataclasses.replace(config, device="cpu", step="eager", overlap=0.25)  # how it runs, not what it learns
    assert key == base_key(same, split_study(data, same.split), data.digest())


def test_base_trained_with_other_settings_is_not_reused(store, tiny_data):
    run_base(BaseConfig(train=tiny_train(tiny_data)))
    run_finetune(FinetuneConfig(train=dataclasses.replace(tiny_train(tiny_data), seed=1), n_images=2))
    assert len(store.search_model_versions("name = 'segft-base'")) == 2  # another seed: a base of its own
    version = max(store.search_model_versions("name = 'segft-base'"), key=lambda v: int(v.version))
    run = store.get_run(version.run_id)
    assert run.data.params["base_key"] == version.tags["segft.base_key"] == run.data.tags["segft.base_key"]


@pytest.mark.parametrize("change, message", [
    ({"patch_size": 32}, "patch_size: base 64, run 32"),
    ({"normalization": "deviation"}, "normalization: base 'percentile', run 'deviation'"),
    ({"model": ModelConfig(encoder="resnet34", encoder_depth=3, decoder_channels=(16, 8, 4))},
     "encoder: base 'resnet18', run 'resnet34'"),
    ({"split": SplitConfig(dataset1_train_images=3, dataset2_pool_images=2)}, "dataset2_pool_images: base 3, run 2"),
])
def test_an_explicit_base_model_that_does_not_fit_is_refused_in_one_line(store, tiny_data, capsys, change, message):
    base = run_base(BaseConfig(train=tiny_train(tiny_data)))
    config = dataclasses.replace(tiny_train(tiny_data), **change)
    with pytest.raises(ValueError, match="does not fit this run") as error:
        run_finetune(FinetuneConfig(train=config, n_images=2, base_model=base.model_uri))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert len(store.search_model_versions("name = 'segft-finetuned'")) == 0


def test_a_base_trained_on_the_runs_test_images_is_refused(store, tiny_data):
    """A base trained on Dataset 1 images 1-3 leaks image 3 into a split that tests on images 3-4."""
    leaking = run_base(BaseConfig(train=tiny_train(tiny_data)))
    config = dataclasses.replace(tiny_train(tiny_data), split=SplitConfig(dataset1_train_images=2,
                                                                          dataset2_pool_images=3))
    with pytest.raises(ValueError, match="was trained on 1 of this run's Dataset 1 test images"):
        run_finetune(FinetuneConfig(train=config, n_images=2, base_model=leaking.model_uri))
    assert len(store.search_model_versions("name = 'segft-finetuned'")) == 0


# ------------------------------------------------------------------------------ finite or refused (issue 13)

def _poisoned(config: TrainConfig):
    """A model whose first convolution holds a NaN: every loss it gives is NaN."""
    import torch

    from segft.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return model


def test_a_non_finite_loss_stops_training_fails_the_run_and_registers_nothing(store, tiny_data, monkeypatch, capsys):
    monkeypatch.setattr("segft.runs.fresh_model", _poisoned)
    status = cli.main(["base", "--data-dir", str(tiny_data), "--epochs", "3", "--batch-size", "16", "--patch-size", "64",
                       "--encoder", "resnet18", "--encoder-depth", "3", "--decoder-channels", "16,8,4",
                       "--dataset1-train-images", "3", "--dataset2-pool-images", "3"])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segft: error")]
    assert status == 2 and "at epoch 1, step 1 of" in line and "no model registered" in line
    (run,) = all_runs(store)
    assert run.info.status == "FAILED" and "epoch 1, step 1" in run.data.tags["segft.error"]
    assert "train_loss" not in run.data.metrics  # not even the poisoned epoch is logged as a loss
    assert store.search_model_versions("name = 'segft-base'") == []


def test_a_plain_finetune_never_starts_from_a_base_whose_run_did_not_finish(store, tiny_data):
    base = run_base(BaseConfig(train=tiny_train(tiny_data)))
    version = store.get_model_version("segft-base", "1")
    store.set_terminated(base.run_id, "KILLED")  # as if killed right after registration
    store.set_model_version_tag("segft-base", "1", "segft.unfinished_run", "KILLED")
    result = run_finetune(FinetuneConfig(train=tiny_train(tiny_data), n_images=2))
    assert store.get_run(result.run_id).data.params["base_model_uri"] == "models:/segft-base/2"
    assert version.run_id == base.run_id


# ------------------------------------------------------------------------------ threads and code version (issue 20)

import torch  # noqa: E402

from segft import machine, schema  # noqa: E402
from segft.runs import prepare  # noqa: E402


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


def test_base_key_keys_the_resolved_thread_count(tiny_data):
    config = tiny_train(tiny_data)
    data = load_data(config.data_dir)
    split = split_study(data, config.split)
    key = base_key(config, split, data.digest())
    assert key == base_key(dataclasses.replace(config, threads=torch.get_num_threads()), split, data.digest())
    assert key != base_key(dataclasses.replace(config, threads=torch.get_num_threads() + 1), split, data.digest())


def test_base_key_keys_the_code_version_but_not_uncommitted_changes(tiny_data, monkeypatch):
    config = tiny_train(tiny_data)
    data = load_data(config.data_dir)
    split = split_study(data, config.split)

    def key_with(code: machine.CodeVersion) -> str:
        monkeypatch.setattr(machine, "code_version", lambda: code)
        return base_key(config, split, data.digest())

    committed = key_with(machine.CodeVersion("0.1.0", "a" * 40))
    assert key_with(machine.CodeVersion("0.1.0", "a" * 40, dirty=True)) == committed
    assert key_with(machine.CodeVersion("0.1.0", "b" * 40)) != committed
    assert key_with(machine.CodeVersion("0.2.0", "a" * 40)) != committed


def test_prepare_gives_this_process_the_thread_count(tiny_data, restore_threads):
    prepare(tiny_train(tiny_data))
    assert torch.get_num_threads() == restore_threads  # 0: the count it had
    prepare(dataclasses.replace(tiny_train(tiny_data), threads=restore_threads + 1))
    assert torch.get_num_threads() == restore_threads + 1


def test_a_run_trains_with_the_thread_count_it_logs_with_the_cpu_and_code_version(store, tiny_data, monkeypatch,
                                                                                 restore_threads):
    seen = []
    monkeypatch.setattr("segft.runs.train", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    threads = restore_threads + 1
    result = run_base(BaseConfig(train=dataclasses.replace(tiny_train(tiny_data), threads=threads)))
    assert seen == [threads]
    params = store.get_run(result.run_id).data.params
    assert params[schema.THREADS_PARAM] == str(threads)
    assert {name: params[name] for name in machine.run_params()} == machine.run_params()
    torch.set_num_threads(restore_threads)
    assert store.get_run(run_base(BaseConfig(train=tiny_train(tiny_data))).run_id).data.params[
        schema.THREADS_PARAM] == str(restore_threads)  # 0: resolved to this process's count
