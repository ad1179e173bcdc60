"""Learning-rate tuning: validation images, storage, pruning, nested MLflow runs, resuming, against real stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from segft import cli, tracking
from segft.config import ModelConfig, SplitConfig, TrainConfig, TuneConfig
from segft.data.split import split_study
from segft.data.synthetic import make_microtube_study, write_study
from segft.tuning import default_storage, make_pruner, run_tuning, tuning_sets
from segft.urls import redact


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=5), tmp_path_factory.mktemp("data") / "study")


def tiny_train(data_dir: Path, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        data_dir=str(data_dir), epochs=epochs, batch_size=16, lr=1e-3, patch_size=64, overlap=0.0,
        model=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
        split=SplitConfig(dataset1_train_images=4, dataset2_pool_images=4),
    )


class PruneTrials(optuna.pruners.BasePruner):
    """Prunes the trials with the given numbers at their first report: pruning that does not depend on Dice."""

    def __init__(self, numbers: set[int]):
        self.numbers = numbers

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number in self.numbers


def runs_with_role(client: MlflowClient, role: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`segft.role` = '{role}'")


# --- without training -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "tracking_uri, expected",
    [
        ("sqlite:////data/runs/mlflow.db", "sqlite:////data/runs/optuna.db"),
        ("sqlite:///mlflow.db", "sqlite:///optuna.db"),
        ("sqlite:///sub/dir/store.db?timeout=30", "sqlite:///sub/dir/optuna.db"),
        ("http://127.0.0.1:5000", "sqlite:///optuna.db"),
        ("file:///data/mlruns", "sqlite:///optuna.db"),
        ("sqlite:///:memory:", "sqlite:///optuna.db"),
    ],
)
def test_default_storage_sits_next_to_the_tracking_store(tracking_uri, expected):
    assert default_storage(tracking_uri) == expected


def test_validation_images_are_never_test_or_training_images():
    split = split_study(make_microtube_study(n_images=5), SplitConfig(dataset1_train_images=4, dataset2_pool_images=4))
    train, validation = tuning_sets(split, "finetune", 2)
    assert train.names == split.finetune_pool.names[:2] and validation.names == split.finetune_pool.names[2:]
    assert not set(validation.names) & set(split.test_dataset2.names)
    train, validation = tuning_sets(split, "base", 0)
    assert train.names == split.base_train.names[:3] and validation.names == split.base_train.names[3:]
    assert not set(validation.names) & set(split.test_dataset1.names)


@pytest.mark.parametrize("n_train, n_validation", [(2, 1), (4, 1), (9, 1), (10, 2), (25, 5)])
def test_base_validation_is_the_last_fifth(n_train, n_validation):
    split = split_study(make_microtube_study(n_images=n_train + 1), SplitConfig(n_train, 1))
    train, validation = tuning_sets(split, "base", 0)
    assert (len(train), len(validation)) == (n_train - n_validation, n_validation)


@pytest.mark.parametrize(
    "settings, message",
    [({"target": "scratch"}, "unknown target"), ({"pruner": "asha"}, "unknown pruner"),
     ({"lr_min": 1e-2, "lr_max": 1e-3}, "lr_min < lr_max"), ({"lr_min": 0.0}, "lr_min"),
     ({"report_every": 0}, "report_every"), ({"n_trials": -1}, "n_trials")],
)
def test_bad_tune_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**settings)


@pytest.mark.parametrize(
    "settings, pruner_class",
    [({}, optuna.pruners.MedianPruner), ({"pruner": "hyperband"}, optuna.pruners.HyperbandPruner),
     ({"pruner": "none"}, optuna.pruners.NopPruner)],
)
def test_pruner_by_name(settings, pruner_class):
    assert type(make_pruner(TuneConfig(**settings))) is pruner_class


def test_storage_password_is_not_logged():
    assert "secret" not in redact("postgresql://segft:secret@db.example.org/optuna")
    assert redact("sqlite:///optuna.db") == "sqlite:///optuna.db"


def test_tune_flags_build_the_config():
    args = cli.build_parser().parse_args(["tune", "--target", "base", "--n-trials", "7", "--lr-min", "1e-5",
                                          "--storage", "postgresql://h/db", "--apply", "true", "--epochs", "3"])
    config = cli.config_from_args(TuneConfig, args)
    assert (config.target, config.n_trials, config.lr_min, config.storage, config.apply, config.train.epochs) == (
        "base", 7, 1e-5, "postgresql://h/db", True, 3)
    assert cli.config_from_args(TuneConfig, cli.build_parser().parse_args(["tune"])) == TuneConfig()


def test_n_images_must_leave_validation_images(store, tiny_data, capsys):
    status = cli.main(["tune", "--data-dir", str(tiny_data), "--n-images", "4", "--dataset1-train-images", "4",
                       "--dataset2-pool-images", "4"])
    assert status == 2
    assert "fine-tuning with n_images=4 and 1 to validate on" in capsys.readouterr().err
    assert store.search_runs([e.experiment_id for e in store.search_experiments()]) == []


def test_a_resumed_parent_gets_new_children_under_mlflow_run(store, monkeypatch):
    """``mlflow run`` hands its run over in MLFLOW_RUN_ID; resuming an earlier parent must not let a child adopt it."""
    experiment = store.get_experiment_by_name("Default").experiment_id
    handed_over, earlier_parent = (store.create_run(experiment).info.run_id for _ in range(2))
    monkeypatch.setenv("MLFLOW_RUN_ID", handed_over)
    with tracking.start_run("tune", {}, run_id=earlier_parent):
        with tracking.start_run("trial-0", {}, nested=True) as child:
            pass
    assert child.info.run_id != handed_over
    assert store.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == earlier_parent


# --- tiny studies -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_tuning_logs_nested_trials_prunes_and_resumes(store, tiny_data, tmp_path):
    config = TuneConfig(train=tiny_train(tiny_data), target="finetune", n_images=2, n_trials=3, lr_min=1e-4,
                        lr_max=1e-2)
    first = run_tuning(config, pruner=PruneTrials({1}))
    assert first.states == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 0}
    assert first.storage == f"sqlite:///{tmp_path / 'optuna.db'}"  # next to the tracking store

    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    (parent,) = runs_with_role(store, "tune")
    assert parent.info.run_id == first.parent_run_id
    trials = {int(run.data.tags["segft.trial_number"]): run for run in runs_with_role(store, "tune_trial")}
    assert sorted(trials) == [0, 1, 2]
    for number, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["segft.trial_state"] == study.trials[number].state.name
        assert float(run.data.params["lr"]) == pytest.approx(study.trials[number].params["lr"])
        assert run.data.params["split_validation"] == ",".join(split_names(parent, "dataset2_pool")[2:])
        assert not set(run.data.params["split_validation"].split(",")) & set(split_names(parent, "dataset2_test"))
        epochs_scored = len(store.get_metric_history(run.info.run_id, "val_dice"))
        assert (run.info.status, epochs_scored) == (("KILLED", 1) if number == 1 else ("FINISHED", 2))

    best = trials[int(parent.data.tags["segft.best_trial"])]
    assert best.data.tags["segft.trial_state"] == "COMPLETE"
    assert parent.data.metrics["best_value"] == pytest.approx(best.data.metrics["val_dice"]) == study.best_value
    assert best.data.metrics["val_dice"] == max(run.data.metrics["val_dice"] for n, run in trials.items() if n != 1)
    assert parent.data.metrics["best_lr"] == pytest.approx(float(best.data.params["lr"])) == first.best_lr
    figures = {artifact.path for artifact in store.list_artifacts(parent.info.run_id, "tuning")}
    assert "tuning/optimization_history.html" in figures and "tuning/lr_slice.html" in figures
    assert store.search_model_versions("name = 'segft-finetuned'") == []  # trials register nothing
    assert len(store.search_model_versions("name = 'segft-base'")) == 1  # the base model the trials start from

    # a second call continues the same study under the same parent run, with the configured (median) pruner
    second = run_tuning(dataclasses.replace(config, n_trials=2, pruner_startup_trials=1))
    assert (second.study_name, second.parent_run_id) == (first.study_name, first.parent_run_id)
    study = optuna.load_study(study_name=first.study_name, storage=first.storage)
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3, 4]
    trial_runs = runs_with_role(store, "tune_trial")
    assert sorted(int(run.data.tags["segft.trial_number"]) for run in trial_runs) == [0, 1, 2, 3, 4]
    assert {run.data.tags["mlflow.parentRunId"] for run in trial_runs} == {first.parent_run_id}
    assert len(runs_with_role(store, "tune")) == 1

    # continuing it with other training settings is refused before any trial runs
    with pytest.raises(ValueError, match="epochs 2 -> 3"):
        run_tuning(dataclasses.replace(config, train=tiny_train(tiny_data, epochs=3)))
    assert len(runs_with_role(store, "tune_trial")) == 5


@pytest.mark.slow
def test_base_tuning_validates_on_held_out_training_images_and_applies_the_best(store, tiny_data, capsys):
    status = cli.main(["tune", "--target", "base", "--data-dir", str(tiny_data), "--epochs", "1", "--batch-size", "16",
                       "--patch-size", "64", "--overlap", "0", "--encoder-depth", "3", "--decoder-channels", "16,8,4",
                       "--dataset1-train-images", "4", "--dataset2-pool-images", "4", "--n-trials", "2",
                       "--pruner", "none", "--apply", "true"])
    assert status == 0, capsys.readouterr().err
    (parent,) = runs_with_role(store, "tune")
    for run in runs_with_role(store, "tune_trial"):
        assert run.data.params["split_train"] == "001,002,003" and run.data.params["split_validation"] == "004"
        assert run.data.params["split_validation"] not in split_names(parent, "dataset1_test")
    (applied,) = runs_with_role(store, "base")  # trained on all four training images with the best rate
    assert float(applied.data.params["lr"]) == pytest.approx(parent.data.metrics["best_lr"])
    assert applied.data.params["split_train"] == "001,002,003,004"
    assert len(store.search_model_versions("name = 'segft-base'")) == 1
    assert "best lr" in capsys.readouterr().out


def split_names(run, part: str) -> list[str]:
    return run.data.params[f"split_{part}"].split(",")
