"""End to end: ``base``, ``finetune`` and ``study`` through ``mlflow run --env-manager local`` into a temporary
store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from segft import schema
from segft.data.synthetic import make_microtube_study, write_study
from segft.presets import PRESETS

PROJECT = Path(__file__).resolve().parents[1]
#: Tiny but complete: 3 training images, 2 test images per dataset, small patches and model, one epoch.
TINY = {
    "epochs": "1", "batch_size": "8", "lr": "0.001", "patch_size": "64", "encoder": "resnet18",
    "encoder_depth": "3", "decoder_channels": "16,8,4", "dataset1_train_images": "3", "dataset2_pool_images": "3",
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=5), tmp_path_factory.mktemp("data") / "study")


def mlflow_run(workdir: Path, entry_points: list[tuple[str, dict]], params: dict) -> tuple[MlflowClient, list]:
    """Run each entry point through ``mlflow run`` as a user would, in ``workdir`` with its own tracking store;
    the client and every run of the experiment, oldest first."""
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    user_env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_EXPERIMENT")}
    env = {**user_env, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for entry_point, extra in entry_points:
        command = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", entry_point, "--env-manager", "local",
                   "--experiment-name", "segft-test"]
        for name, value in {**params, **extra}.items():
            command += ["-P", f"{name}={value}"]
        completed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("segft-test")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def project_runs(tmp_path_factory, tiny_data):
    """Run ``base`` then ``finetune`` as a user would, in a fresh working directory and tracking store."""
    client, runs = mlflow_run(tmp_path_factory.mktemp("work"), [("base", {}), ("finetune", {"n_images": "2"})],
                              {**TINY, "data_dir": str(tiny_data)})
    yield client, {run.data.tags["segft.role"]: run for run in runs}
    mlflow.set_tracking_uri(None)


def test_finetune_without_a_base_model_trains_one_first_and_adopts_the_mlflow_run(tmp_path, tiny_data):
    """No base model with this key (a first ``finetune``, or one after the code changed): the base model is its
    own run, and the fine-tuning is the run ``mlflow run`` created, not a third, untagged one."""
    try:
        _, runs = mlflow_run(tmp_path, [("finetune", {"n_images": "2"})], {**TINY, "data_dir": str(tiny_data)})
        assert [run.data.tags.get("segft.role") for run in runs] == ["finetune", "base"]  # mlflow run's run first
        assert all(run.info.status == "FINISHED" for run in runs)
    finally:
        mlflow.set_tracking_uri(None)


def test_a_study_through_mlflow_run_logs_the_settings_it_used_never_an_empty_string(tmp_path, tiny_data):
    """The study entry point leaves its training parameters undeclared: one given with -P is logged as given, and
    the others are logged with the preset's value (issue 21: the parent run logged ``''`` for them)."""
    try:
        _, runs = mlflow_run(tmp_path, [("study", {"preset": "quick", "sizes": "1", "repeats": "1",
                                                   "arms": "finetune", "system_metrics": "false"})],
                             {**TINY, "data_dir": str(tiny_data)})
        (parent,) = [run for run in runs if run.data.tags.get(schema.ROLE_TAG) == schema.ROLE_STUDY]
        params = parent.data.params
        assert parent.info.status == "FINISHED"
        assert params["epochs"] == "1" and params["batch_size"] == "8" and params["patch_size"] == "64"  # given
        for name in ("finetune_lr", "normalization", "freeze", "bce_in_every_branch"):  # from the preset
            assert params[name] == str(PRESETS["quick"][name]), name
        assert params["preset"] == "quick"
    finally:
        mlflow.set_tracking_uri(None)


pytestmark = pytest.mark.slow


def test_one_base_and_one_finetune_run_finished(project_runs):
    _, runs = project_runs
    assert set(runs) == {"base", "finetune"}
    assert all(run.info.status == "FINISHED" for run in runs.values())


@pytest.mark.parametrize("role", ["base", "finetune"])
def test_run_logs_parameters_metrics_and_artifacts(project_runs, role):
    client, runs = project_runs
    run = runs[role]
    params, metrics = run.data.params, run.data.metrics
    assert params["n_images"] == ("0" if role == "base" else "2")
    assert params["epochs"] == "1" and params["patch_size"] == "64" and params["encoder"] == "resnet18"
    assert len(params["data_digest"]) == 16 and params["data_digest"] == run.data.tags["segft.data_digest"]
    assert params["split_dataset1_test"] == "004,005" and params["split_dataset2_test"] == "004,005"
    assert params["split_train"] == ("001,002,003" if role == "base" else "001,002")
    for name in ("test_dice_dataset1", "test_dice_dataset2"):
        assert 0.0 <= metrics[name] <= 1.0
    for name in ("train_loss", "loss_branch_bce", "loss_branch_bce_tversky", "loss_branch_tversky_focal"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 1
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    table = pd.read_csv(artifacts / "evaluation" / "per_image_dice.csv")
    assert list(table["dataset"]) == ["dataset1"] * 2 + ["dataset2"] * 2
    assert table.groupby("dataset")["dice"].mean()["dataset1"] == pytest.approx(metrics["test_dice_dataset1"])
    assert sorted(p.name for p in (artifacts / "overlays" / "dataset2").iterdir()) == ["004.png", "005.png"]
    assert (artifacts / "split.json").is_file()


def test_branch_counts_cover_every_patch(project_runs):
    client, runs = project_runs
    run = runs["base"]
    counts = sum(client.get_metric_history(run.info.run_id, f"loss_branch_{b}")[0].value
                 for b in ("bce", "bce_tversky", "tversky_focal"))
    assert counts == int(run.data.params["train_patches"]) == 3 * 9 * 3  # 558 x 136 at 64 px: 9 x 3 patches


def test_models_are_registered_and_finetune_starts_from_the_base(project_runs):
    client, runs = project_runs
    base_version = client.get_model_version("segft-base", "1")
    finetuned_version = client.get_model_version("segft-finetuned", "1")
    assert base_version.run_id == runs["base"].info.run_id
    assert finetuned_version.run_id == runs["finetune"].info.run_id
    assert finetuned_version.tags["n_images"] == "2"
    assert runs["finetune"].data.params["base_model_uri"] == "models:/segft-base/1"
    assert runs["finetune"].data.params["base_run_id"] == runs["base"].info.run_id


def test_registered_model_segments_whole_images(project_runs, tiny_data):
    import numpy as np

    model = mlflow.pyfunc.load_model("models:/segft-finetuned/1")
    stack = np.random.default_rng(0).random((2, 70, 90)).astype(np.float32)
    masks = model.predict(stack)
    assert masks.shape == (2, 70, 90) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}


def _mlflow_run_command(workdir: Path, entry_point: str, params: dict) -> subprocess.CompletedProcess:
    """``mlflow run`` of one entry point in ``workdir``'s store, as ``mlflow_run`` does, whatever its outcome."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_EXPERIMENT")},
           "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT), "-e", entry_point, "--env-manager", "local",
               "--experiment-name", "segft-test", *(f"-P{name}={value}" for name, value in params.items())]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def test_an_unknown_parameter_through_mlflow_run_leaves_no_run_behind(tmp_path):
    """Issue 22: ``-P nonsense=1`` printed argparse's usage text and left a FAILED run. Now one line, and the run
    ``mlflow run`` opened is deleted (restorable), its ``segft.error`` tag saying why."""
    from mlflow.entities import ViewType

    completed = _mlflow_run_command(tmp_path, "base", {"nonsense": "1"})
    assert completed.returncode != 0
    ours = [line for line in completed.stderr.splitlines() if line.startswith("segft")]
    assert ours == ["segft: error: unrecognized arguments: --nonsense 1; see 'segft base --help'"], completed.stderr
    assert "usage:" not in completed.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segft-test")
    assert client.search_runs([experiment.experiment_id]) == []
    (deleted,) = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert deleted.info.status == "FAILED" and deleted.data.tags[schema.ERROR_TAG] == ours[0]


def test_the_prune_entry_point_lists_what_it_would_delete(project_runs):
    """``mlflow run -e prune -P dry_run=true`` on the store of one base and one fine-tuned run: no alias, champion
    or unfinished study needs either model."""
    client, _ = project_runs
    workdir = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///")).parent  # project_runs set it
    completed = _mlflow_run_command(workdir, "prune", {"dry_run": "true"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert sum(line.startswith("would delete ") for line in lines) == 3, completed.stdout
    assert lines[-1].startswith("would delete 2 logged model(s),") and lines[-1].endswith("nothing was deleted")
    assert {v.version for v in client.search_model_versions()} == {1}  # one version of each, left as it was
