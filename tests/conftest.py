"""Shared fixtures: a small fake-but-real study logged straight into an MLflow store (no training).

``fake_study_store`` logs what ``segft study`` logs (parent run, child runs with the same tags, params, metrics
and artifacts) with made-up Dice values chosen so that all three study claims hold. It writes to the store named
by ``fake_study_tracking_uri`` (a SQLite file by default); a test module can override that fixture to log the same
study to an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def loopback_process(command: list[str], ready_url: str, log_path: Path, timeout: float = 180, **popen_kwargs):
    """Run a server (``mlflow server``, ``mlflow models serve``) in its own process group until ``ready_url``
    answers; on exit end the whole group, helper processes included, so no stray process outlives the test."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, **popen_kwargs)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(ready_url, timeout=2)
                    break
                except OSError:
                    if process.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"{command[:4]} did not start: {log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
            yield process
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except ProcessLookupError:  # it had already exited
                process.wait()
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def forget_active_experiment() -> None:
    """Drop the experiment ``mlflow.set_experiment`` made active in this process (and in ``MLFLOW_EXPERIMENT_ID``,
    which subprocesses inherit): the next test's store does not have it."""
    import mlflow.tracking.fluent

    mlflow.tracking.fluent._active_experiment_id = None
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"):
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def no_active_experiment():
    """Each test starts and ends with no active MLflow experiment (``segft`` commands set one)."""
    forget_active_experiment()
    yield
    forget_active_experiment()


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_sqlite_store) -> MlflowClient:
    """A fresh SQLite tracking store in a fresh working directory, used by the code under test through MLflow's
    own URI setting (anything else a command writes next to it, like optuna.db, lands there too)."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(empty_sqlite_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def perturbed_model(config):
    """A model whose weights and batch-norm statistics differ from a freshly built one's (varied predictions)."""
    import torch

    from segft.models import build_model

    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        model.train()
        model(torch.randn(4, 1, 32, 32) * 3 + 1)  # moves the running means and variances
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two OpenMP threads on a busy 2-core machine can be 100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class FakeStudyDesign:
    """The shape of the fake study: every arm at every size and repeat, plus the raw base model."""

    sizes: tuple[int, ...] = (2, 4)
    repeats: int = 2
    arms: tuple[str, ...] = ("finetune", "scratch")
    datasets: tuple[str, ...] = ("dataset1", "dataset2")
    images: tuple[str, ...] = ("001", "002", "003")  # zero-padded on purpose: must stay strings
    shape: tuple[int, int] = (60, 20)  # tall and narrow, like the real images

    @property
    def n_runs(self) -> int:
        """Finished child runs: the base model and every arm × size × repeat."""
        return 1 + len(self.arms) * len(self.sizes) * self.repeats


class FakeStudy(NamedTuple):
    tracking_uri: str
    study_id: str
    parent_run_id: str


def fake_dice(arm: str, n_images: int, repeat: int, dataset: str, image: int) -> float:
    """Made-up Dice: Dataset 2 starts lower and rises with n under fine-tuning; Dataset 1 barely moves."""
    jitter = 0.01 * image + 0.005 * repeat
    if arm == "raw":
        return (0.80 if dataset == "dataset1" else 0.45) + jitter
    if arm == "finetune":
        return (0.79 if dataset == "dataset1" else 0.50 + 0.05 * n_images) + jitter
    return (0.20 if dataset == "dataset1" else 0.20 + 0.05 * n_images) + jitter


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def _truth(shape: tuple[int, int], image: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 4 + image : 3 * shape[0] // 4, shape[1] // 4 : 3 * shape[1] // 4] = 255
    return mask


def _log_child(client: MlflowClient, parent: Run, folder: Path, design: FakeStudyDesign, arm: str, n_images: int,
               repeat: int, status: str = "FINISHED") -> None:
    """One child run as ``segft study`` logs it: tags, params, metrics, per-image table and predicted masks."""
    study_id = parent.data.tags["segft.study_id"]
    key = "base" if arm == "raw" else f"{arm}/n{n_images}/r{repeat}"
    tags = {"segft.study_id": study_id, "segft.run_key": key, "segft.arm": arm,
            "segft.role": "base" if arm == "raw" else arm}
    params = {"n_images": n_images}
    if arm != "raw":
        tags["segft.repeat"] = str(repeat)
        params["repeat"] = repeat
    run = client.create_run(parent.info.experiment_id, tags={**tags, "mlflow.parentRunId": parent.info.run_id},
                            run_name=key.replace("/", "-"))
    files = folder / run.info.run_id
    rows = []
    for dataset in design.datasets:
        for index, name in enumerate(design.images):
            rows.append({"dataset": dataset, "image": name, "dice": fake_dice(arm, n_images, repeat, dataset, index),
                         "tp": 10, "fp": 1, "fn": 1})
            prediction = np.roll(_truth(design.shape, index), n_images, axis=0)
            _write_png(files / "predictions" / dataset / f"{name}.png", prediction)
    table = pd.DataFrame(rows)
    (files / "evaluation").mkdir(parents=True)
    table.to_csv(files / "evaluation" / "per_image_dice.csv", index=False)
    metrics = {f"test_dice_{d}": float(g["dice"].mean()) for d, g in table.groupby("dataset")}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.log_artifacts(run.info.run_id, str(files))
    client.set_terminated(run.info.run_id, status)


@pytest.fixture
def fake_study_design() -> FakeStudyDesign:
    return FakeStudyDesign()


@pytest.fixture(scope="session")
def empty_sqlite_store(tmp_path_factory) -> Path:
    """An initialized, empty SQLite tracking database; creating one runs MLflow's migrations (seconds), copying
    it does not."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fake_study_tracking_uri(tmp_path, empty_sqlite_store) -> str:
    """Where ``fake_study_store`` logs; override in a module to use another store (e.g. ``http://...``)."""
    shutil.copyfile(empty_sqlite_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def fake_study_store(fake_study_tracking_uri, fake_study_design, tmp_path) -> FakeStudy:
    """A finished fake study logged with the MLflow client: ``(tracking_uri, study_id, parent_run_id)``.

    Besides the finished runs it logs one FAILED duplicate child run, which the analysis must ignore.
    """
    design, uri = fake_study_design, fake_study_tracking_uri
    client = MlflowClient(uri)
    local_store = not uri.startswith(("http://", "https://"))
    artifacts = (tmp_path / "artifacts").as_uri() if local_store else None  # a server picks its own location
    experiment_id = client.create_experiment(f"fake-study-{uuid.uuid4().hex[:8]}", artifact_location=artifacts)
    study_id = uuid.uuid4().hex[:12]
    folder = tmp_path / "fake_study_files"
    folder.mkdir()
    parent = client.create_run(experiment_id, tags={"segft.role": "study", "segft.study_id": study_id,
                                                    "segft.data_digest": "0123456789abcdef"},
                               run_name=f"study-{study_id}")
    params = {"sizes": ",".join(map(str, design.sizes)), "repeats": design.repeats, "arms": ",".join(design.arms),
              "preset": "quick", "epochs": 1, "lr": 0.001, "data_digest": "0123456789abcdef", "study_id": study_id}
    client.log_batch(parent.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    for dataset in design.datasets:
        for index, name in enumerate(design.images):
            grey = np.linspace(0, 255, design.shape[0] * design.shape[1]).reshape(design.shape).astype(np.uint8)
            _write_png(folder / "parent" / "test_data" / dataset / "images" / f"{name}.png", grey)
            _write_png(folder / "parent" / "test_data" / dataset / "masks" / f"{name}.png", _truth(design.shape, index))
    client.log_artifacts(parent.info.run_id, str(folder / "parent"))
    _log_child(client, parent, folder, design, "raw", 0, 0)
    for repeat in range(design.repeats):
        for n in design.sizes:
            for arm in design.arms:
                _log_child(client, parent, folder, design, arm, n, repeat)
    _log_child(client, parent, folder, design, design.arms[0], design.sizes[0], 0, status="FAILED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return FakeStudy(uri, study_id, parent.info.run_id)
