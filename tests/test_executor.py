"""Studies and tuning on a local Ray instance (this machine's CPUs: 2 in CI; issue 15), through the real ``segft`` command.

A study on Ray trains exactly the runs a sequential study trains, with bitwise the same training losses and Dice
(same seeds, one PyTorch thread per run on both sides); a worker killed mid-run is started again and its dead run
marked FAILED; a task that dies for good leaves no run RUNNING and the study resumes; tuning workers share one
Optuna study.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from mlflow import MlflowClient

from segft.data.synthetic import make_microtube_study, write_study
from segft.tracking.runs import SYSTEM_EXIT_REASON
from segft.tuning import trials_per_worker

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["study", "--preset", "quick", "--epochs", "2", "--batch-size", "8", "--patch-size", "64",
         "--decoder-channels", "16,8,8,4", "--dataset1-train-images", "3", "--dataset2-pool-images", "3",
         "--sizes", "2", "--repeats", "2", "--arms", "finetune,scratch,threshold"]
RAY = ["--executor", "ray", "--cpus-per-run", "1"]
#: The run a test kills: a fine-tuning run of repeat 1, which waits for its base model.
VICTIM = "finetune/n2/r1"


@contextlib.contextmanager
def _started(store: Path, *argv: str, data: Path) -> Iterator[subprocess.Popen]:
    """``segft`` in its own process group (Ray starts helper processes), the whole group ended after the block."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    report = ["--report-dir", str(store / "report")] if argv[0] == "study" else []
    command = [sys.executable, "-m", "segft", *argv, "--data-dir", str(data), *report]
    process = subprocess.Popen(command, cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _segft(store: Path, *argv: str, data: Path) -> subprocess.CompletedProcess:
    """Run ``segft`` to its end."""
    with _started(store, *argv, data=data) as process:
        stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _running(store: Path) -> list[tuple[str, str]]:
    """(run id, run key or '') of the RUNNING runs, read with sqlite3 read-only: an MLflow client would create or
    migrate the database while ``segft`` does."""
    query = """SELECT runs.run_uuid, COALESCE(run_key.value, '') FROM runs
               LEFT JOIN tags AS run_key ON run_key.run_uuid = runs.run_uuid AND run_key.key = 'segft.run_key'
               WHERE runs.status = 'RUNNING'"""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True)) as db:
            return db.execute(query).fetchall()
    except sqlite3.Error:  # not created yet, or locked for a moment
        return []


def _client(store: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{store / 'mlflow.db'}")


def _runs(store: Path) -> list:
    client = _client(store)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _finished(store: Path) -> dict[str, tuple[dict[str, float], list[float]]]:
    """Every finished child run by run key: its test and validation Dice, and its training loss per epoch."""
    client = _client(store)
    outcome = {}
    for run in _runs(store):
        key = run.data.tags.get("segft.run_key")
        if key and run.info.status == "FINISHED":
            assert key not in outcome, f"two finished runs for {key}"
            losses = [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")]
            outcome[key] = ({k: v for k, v in run.data.metrics.items() if k.startswith(("test_dice", "val_dice"))},
                            losses)
    return outcome


def _kill_when_running(store: Path, run_key: str, killed: list[str]) -> threading.Thread:
    """A thread that SIGKILLs the Ray worker of ``run_key``'s first RUNNING run (its ``segft.pid`` tag)."""
    def watch():
        deadline = time.time() + 300
        while time.time() < deadline:
            victims = [run_id for run_id, key in _running(store) if key == run_key]
            if victims:
                os.kill(int(_client(store).get_run(victims[0]).data.tags["segft.pid"]), signal.SIGKILL)
                killed.append(victims[0])
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=5), tmp_path_factory.mktemp("data") / "study")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data):
    store = tmp_path_factory.mktemp("sequential")
    completed = _segft(store, *STUDY, data=data)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return _finished(store)


def test_a_study_on_ray_equals_the_sequential_study_even_with_a_worker_killed(sequential, data, tmp_path):
    killed: list[str] = []
    watcher = _kill_when_running(tmp_path, VICTIM, killed)
    completed = _segft(tmp_path, *STUDY, *RAY, data=data)
    watcher.join(timeout=5)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(sequential) == 2 + 1 + 2 * 2  # a base model per repeat, threshold, 2 repeats x 2 arms
    assert _finished(tmp_path) == sequential  # same runs, same losses and Dice, to the last bit

    assert killed, "the run to kill never ran"  # its task was started again, and its dead run marked FAILED
    dead = _client(tmp_path).get_run(killed[0])
    assert dead.info.status == "FAILED"
    assert "ended without ending the run" in dead.data.tags["segft.error"]
    runs = _runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]

    (parent,) = [r for r in runs if r.data.tags["segft.role"] == "study"]
    children = [r for r in runs if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    trained = [r for r in children if r.data.tags["segft.run_key"] != "threshold"]
    assert all(r.data.tags["segft.ray_task"] for r in trained)  # trained in Ray tasks...
    assert {r.data.tags["segft.pid"] for r in trained}.isdisjoint({parent.data.tags["segft.pid"]})  # ...not here
    assert len({r.data.tags["segft.pid"] for r in trained}) >= 2  # by at least two workers


def test_a_task_that_dies_for_good_leaves_no_run_running(sequential, data, tmp_path):
    killed: list[str] = []
    watcher = _kill_when_running(tmp_path, VICTIM, killed)
    failed = _segft(tmp_path, *STUDY, *RAY, "--task-retries", "0", data=data)
    watcher.join(timeout=5)
    assert killed, "the run to kill never ran"
    assert failed.returncode != 0
    statuses = {r.data.tags.get("segft.run_key", "study"): r.info.status for r in _runs(tmp_path)}
    assert statuses[VICTIM] == "FAILED" and statuses["study"] == "FAILED"
    assert "RUNNING" not in statuses.values()
    assert _client(tmp_path).get_run(killed[0]).data.tags["segft.error"] == "its Ray task failed"

    resumed = _segft(tmp_path, *STUDY, *RAY, data=data)  # every other run is kept and reused, none trained twice
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _finished(tmp_path) == sequential
    assert sum(r.data.tags.get("segft.run_key") == VICTIM for r in _runs(tmp_path)) == 2  # the dead one + the new one


def test_sigterm_to_a_study_on_ray_cancels_its_tasks_and_ends_every_run_killed(data, tmp_path):
    """Ray installs its own SIGTERM handler in the driver (exit, then abort); segft keeps its own: exit 143."""
    with _started(tmp_path, *STUDY, *RAY, data=data) as process:
        deadline = time.time() + 240
        while len([key for _, key in _running(tmp_path) if key.startswith("base/")]) < 2 and time.time() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)  # the driver only, as `timeout` or a job scheduler would
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    statuses = {r.data.tags.get("segft.run_key", "study"): (r.info.status, r.data.tags.get("segft.error"))
                for r in _runs(tmp_path)}
    assert statuses["study"][0] == "KILLED"
    # the driver ends a cancelled task's run, or the task's worker does as it is told to exit (whichever comes first)
    reasons = {"its Ray task was cancelled (the command was stopped)", SYSTEM_EXIT_REASON}
    assert statuses["base/r0"][0] == statuses["base/r1"][0] == "KILLED", statuses
    assert {statuses["base/r0"][1], statuses["base/r1"][1]} <= reasons, statuses
    assert not [status for status, _ in statuses.values() if status == "RUNNING"]


def test_tuning_workers_on_ray_share_one_optuna_study(data, tmp_path):
    import optuna

    tune = ["tune", "--epochs", "1", "--batch-size", "8", "--patch-size", "64", "--decoder-channels", "16,8,8,4",
            "--dataset1-train-images", "3", "--dataset2-pool-images", "3", "--n-images", "1", "--n-trials", "3",
            "--pruner", "none", "--executor", "ray", "--workers", "2"]
    completed = _segft(tmp_path, *tune, data=data)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags["segft.role"] == "tune"]
    trial_runs = [r for r in runs if r.data.tags["segft.role"] == "tune_trial"]
    assert sorted(int(r.data.tags["segft.trial_number"]) for r in trial_runs) == [0, 1, 2]
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent.info.run_id}
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    assert len({r.data.tags["segft.ray_task"] for r in trial_runs}) == 2  # two workers drew the trials
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in trial_runs}


def test_trials_are_split_evenly_among_workers():
    assert trials_per_worker(20, 4) == [5, 5, 5, 5]
    assert trials_per_worker(5, 2) == [3, 2]
    assert trials_per_worker(1, 3) == [1]  # workers without a trial are not started
    assert trials_per_worker(0, 2) == []
