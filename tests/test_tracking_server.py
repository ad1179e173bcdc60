"""The shared tracking server (``scripts/tracking-server.sh``): PostgreSQL behind ``mlflow server``, used by a
study and by two tuning workers at once, and refusing strangers once basic authentication is on."""

from __future__ import annotations

import base64
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient

from conftest import free_port, loopback_process
from analysis.report import build_report
from segft.config import ReportConfig, StudyConfig
from segft.data.synthetic import make_microtube_study, write_study
from segft.presets import preset_train_config
from segft.study import run_study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                       reason="PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tracking-server.sh"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
TINY_TUNE = ["--target", "base", "--n-trials", "1", "--pruner", "none", "--epochs", "1", "--batch-size", "16",
             "--patch-size", "64", "--overlap", "0", "--encoder", "resnet18", "--encoder-depth", "3",
             "--decoder-channels", "16,8,4", "--dataset1-train-images", "3", "--dataset2-pool-images", "3"]


class Server:
    """A running ``tracking-server.sh start``: its data folder, ports and what it printed."""

    def __init__(self, root: Path, port: int, db_port: int, log: Path):
        self.root, self.url, self.db_port, self.log = root, f"http://127.0.0.1:{port}", db_port, log

    def secret(self, name: str) -> str:
        return (self.root / "secrets" / name).read_text().strip()


def start_server(root: Path, *options: str):
    """``tracking-server.sh start`` on fresh ports in its own process group, ended as a whole group."""
    port, db_port = free_port(), free_port()
    log = root.with_name(root.name + ".log")  # outside the data folder, which the script creates
    command = ["bash", str(SCRIPT), "start", "--dir", str(root), "--port", str(port), "--db-port", str(db_port),
               "--workers", "1", *options]
    env = {**os.environ, "PYTHON": sys.executable}
    server = loopback_process(command, f"http://127.0.0.1:{port}/health", log, timeout=150, env=env)
    return server, Server(root, port, db_port, log)


@pytest.fixture(scope="module")
def scratch():
    """A folder under /tmp (pytest's own is closed to other users; the script's PostgreSQL runs as ``postgres``)."""
    folder = Path(tempfile.mkdtemp(prefix="segft-server-test-"))
    folder.chmod(0o711)  # mkdtemp makes it 0700
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(scratch):
    process, server = start_server(scratch / "server")
    with process:
        yield server


@pytest.fixture(scope="module")
def data(scratch):
    return write_study(make_microtube_study(n_images=5), scratch / "data")


def search_all(client: MlflowClient, query: str = ""):
    return client.search_runs([e.experiment_id for e in client.search_experiments()], query)


def test_a_study_logged_to_the_server_is_read_back_whole(server, data, scratch, one_thread):
    train = preset_train_config("quick", {
        "data_dir": str(data), "epochs": 1, "patch_size": 64, "decoder_channels": (16, 8, 8, 4),
        "dataset1_train_images": 3, "dataset2_pool_images": 3,
    })
    work = scratch / "study"
    work.mkdir()
    config = StudyConfig(train=train, sizes=(1, 2), repeats=1, arms=("finetune",), report_dir=str(work / "report"))
    mlflow.set_tracking_uri(server.url)
    previous_cwd = os.getcwd()
    os.chdir(work)  # nothing of the study may land in the checkout
    try:
        result = run_study(config)
    finally:
        os.chdir(previous_cwd)
        mlflow.set_tracking_uri(None)
    report = build_report(ReportConfig(tracking_uri=server.url, study_id=result.study_id,
                                       report_dir=str(work / "report")))

    children = search_all(MlflowClient(server.url), f"tags.`segft.study_id` = '{result.study_id}' "
                                                    "and tags.`segft.role` != 'study'")
    finished = Counter(run.data.tags["segft.run_key"] for run in children if run.info.status == "FINISHED")
    assert finished == Counter(set(result.runs))  # exactly one finished run per key: none lost, none doubled
    assert {"base/r0", "finetune/n1/r0", "finetune/n2/r0"} <= set(finished)
    assert sorted(set(report.tidy["run_id"])) == sorted(r.run_id for r in result.runs.values())
    assert len(report.tidy) == len(result.runs) * 2 * 2  # runs x datasets x 2 test images each
    # artifacts went through the server into its own folder
    assert list((server.root / "artifacts").rglob("per_image_dice.csv"))


def test_two_tuning_workers_share_one_optuna_study_and_one_tracking_server(server, data, scratch):
    storage = f"postgresql://optuna@127.0.0.1:{server.db_port}/optuna"
    password = server.secret("postgres-optuna-password")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "SEGFT_STORAGE_PASSWORD": password,
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import sys; from segft import cli; sys.exit(cli.main(sys.argv[1:]))", "tune",
               *TINY_TUNE, "--data-dir", str(data), "--storage", storage, "--study-name", "shared"]
    work = scratch / "tune"
    work.mkdir()
    start = lambda: subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,  # noqa: E731
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = MlflowClient(server.url)
    workers = [start(), start()]  # at once: both open the same new experiment and log the same datasets
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]
        assert password not in output

    os.environ["SEGFT_STORAGE_PASSWORD"] = password  # load the study the way the workers did
    try:
        from segft.urls import storage_with_password

        study = optuna.load_study(study_name="shared", storage=storage_with_password(storage))
    finally:
        del os.environ["SEGFT_STORAGE_PASSWORD"]
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]

    parents = search_all(client, "tags.`segft.role` = 'tune' and tags.`segft.tuning_study` = 'shared'")
    trials = search_all(client, "tags.`segft.role` = 'tune_trial'")
    assert 1 <= len(parents) <= 2  # two workers starting together may each open the study's parent run
    assert sorted(int(run.data.tags["segft.trial_number"]) for run in trials) == [0, 1]
    assert {run.data.tags["mlflow.parentRunId"] for run in trials} <= {run.info.run_id for run in parents}
    assert [run.info.status for run in [*parents, *trials] if run.info.status != "FINISHED"] == []
    # neither database password reaches MLflow or the server's output
    secrets = {password, server.secret("postgres-mlflow-password")}
    logged = [value for run in search_all(client) for value in [*run.data.params.values(), *run.data.tags.values()]]
    assert [value for value in logged if any(secret in value for secret in secrets)] == []
    assert not any(secret in server.log.read_text() for secret in secrets)


def test_tuning_workers_on_ray_share_the_postgresql_study_and_the_server(server, data, scratch):
    """``segft tune --executor ray --workers 2``: two Ray tasks draw the trials of one Optuna study on PostgreSQL;
    each worker takes the storage password from its own environment (never sent with the task)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    storage = f"postgresql://optuna@127.0.0.1:{server.db_port}/optuna"
    password = server.secret("postgres-optuna-password")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "SEGFT_STORAGE_PASSWORD": password,
           "OMP_NUM_THREADS": "1"}
    work = scratch / "tune-on-ray"
    work.mkdir()
    completed = subprocess.run(
        [sys.executable, "-m", "segft", "tune", *TINY_TUNE, "--n-trials", "2", "--data-dir", str(data),
         "--storage", storage, "--study-name", "shared-on-ray", "--executor", "ray", "--workers", "2"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert password not in completed.stdout + completed.stderr

    study = optuna.load_study(study_name="shared-on-ray", storage=storage.replace("optuna@", f"optuna:{password}@"))
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(server.url)
    (parent,) = search_all(client, "tags.`segft.role` = 'tune' and tags.`segft.tuning_study` = 'shared-on-ray'")
    trials = [run for run in search_all(client, "tags.`segft.role` = 'tune_trial'")
              if run.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    assert sorted(int(run.data.tags["segft.trial_number"]) for run in trials) == [0, 1]
    assert len({run.data.tags["segft.ray_task"] for run in trials}) == 2  # one trial per worker
    assert {run.info.status for run in [parent, *trials]} == {"FINISHED"}


def _get(url: str, user: str = "", password: str = "") -> int:
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_with_auth_the_server_refuses_strangers_and_stops_on_request(scratch):
    process, server = start_server(scratch / "auth-server", "--auth")
    with process as running:
        assert _get(server.url + SEARCH) == 401
        assert _get(server.url + SEARCH, "admin", "not-the-password") == 401
        assert _get(server.url + SEARCH, "admin", server.secret("mlflow-admin-password")) == 200
        assert server.secret("mlflow-admin-password") not in server.log.read_text()
        assert {oct(path.stat().st_mode & 0o777) for path in (server.root / "secrets").iterdir()} == {"0o600"}

        stop = subprocess.run(["bash", str(SCRIPT), "stop", "--dir", str(server.root)], capture_output=True,
                              text=True, timeout=90)
        assert stop.returncode == 0, stop.stderr
        assert running.wait(timeout=30) == 0
        assert not (server.root / "server.pid").exists()
    assert (server.root / "postgres" / "PG_VERSION").exists()  # the data stays
