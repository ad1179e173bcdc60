"""Processes sharing one store at the same moment (issue 22): a new SQLite store (MLflow's and Optuna's) survives
processes that start together on it, and one study run by two processes at once trains and registers every run
once (``segft.tracking.claims``). Real stores and real processes; each process runs in its own process group,
ended with the test."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from segft import schema, tracking
from segft.data.synthetic import make_microtube_study, write_study

ROOT = Path(__file__).resolve().parents[1]
#: Imports the modules in argv[1] (comma-separated), says it is ready and waits for a line on stdin, then runs the
#: code in argv[2] with the remaining arguments in ``args``: the processes reach the store at the same moment, not
#: one after another as their imports end.
TOGETHER = r"""
import importlib, os, sys, time
import segft.tracking
modules, code, args = sys.argv[1], sys.argv[2], sys.argv[3:]
for module in filter(None, modules.split(",")):
    importlib.import_module(module)
print("ready", flush=True)
sys.stdin.readline()
exec(code)
"""
STUDY = ["study", "--preset", "quick", "--epochs", "1", "--batch-size", "16", "--patch-size", "64", "--encoder",
         "resnet18", "--encoder-depth", "3", "--decoder-channels", "16,8,4", "--dataset1-train-images", "3",
         "--dataset2-pool-images", "3", "--sizes", "1", "--repeats", "1", "--arms", "finetune,threshold"]
#: The runs of ``STUDY``, by key.
STUDY_RUNS = {"base/r0", "threshold", "finetune/n1/r0"}


def _env(uri: str | None) -> dict[str, str]:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    return {**env, "MLFLOW_TRACKING_URI": uri} if uri else env


@contextlib.contextmanager
def processes(n: int, code: str, args: list[str], cwd: Path, uri: str | None, modules: str = "") -> Iterator[list]:
    """``n`` processes that import ``modules``, then run ``code`` at the same moment; each in its own process
    group, killed on exit if it still runs."""
    started = [subprocess.Popen([sys.executable, "-c", TOGETHER, modules, code, *args], cwd=cwd, env=_env(uri),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
               for _ in range(n)]
    try:
        for process in started:
            assert process.stdout.readline() == "ready\n", process.communicate()[1][-2000:]
        for process in started:
            process.stdin.write("go\n")
            process.stdin.flush()
        yield started
    finally:
        for process in started:
            if process.returncode is None:  # not waited for by ``finish``
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


def finish(started: list, timeout: float) -> list[tuple[int, str, str]]:
    """Exit status, stdout and stderr of each process, once all have ended."""
    deadline = time.time() + timeout
    outputs = [p.communicate(timeout=max(1.0, deadline - time.time())) for p in started]
    return [(p.returncode, *output) for p, output in zip(started, outputs)]


# ------------------------------------------------------------------------------------------------ a new store

@pytest.mark.parametrize("given", [True, False], ids=["MLFLOW_TRACKING_URI", "MLflow's default sqlite:///mlflow.db"])
def test_processes_starting_together_on_a_new_store_all_open_it(tmp_path, given):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = "segft.tracking.use_experiment('segft', False, 'started together')"
    with processes(4, code, [], tmp_path, uri if given else None) as started:
        outcomes = finish(started, timeout=120)
    assert [rc for rc, _, _ in outcomes] == [0] * 4, [err[-1500:] for _, _, err in outcomes]
    client = MlflowClient(uri)
    assert {e.name for e in client.search_experiments()} == {"segft", "Default"}
    assert client.search_registered_models() == []


@pytest.mark.slow  # importing segft.tuning (torch) in four processes at once
def test_tuning_workers_starting_together_on_a_new_optuna_storage_all_open_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    code = "segft.tuning.open_storage(args[0]).get_all_studies()"
    with processes(4, code, [url], tmp_path, None, modules="segft.tuning") as started:
        outcomes = finish(started, timeout=120)
    assert [rc for rc, _, _ in outcomes] == [0] * 4, [err[-1500:] for _, _, err in outcomes]


# ------------------------------------------------------------------------------------------------ claims

@pytest.fixture()
def experiment(store) -> MlflowClient:
    tracking.use_experiment("segft", False, "claims")
    return store


def _claim_run(client: MlflowClient, key: str, **tags: str) -> str:
    """A claim as another process leaves one: RUNNING, with its process and heartbeat tags."""
    tags = {schema.CLAIM_TAG: key, **tracking.process_tags(), schema.HEARTBEAT_TAG: f"{time.time():.1f}", **tags}
    return client.create_run(tracking.current_experiment_id(), tags=tags).info.run_id


def _gone_pid() -> str:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return done.stdout.strip()


TAKEOVER_CASES = [
    # (case, tags of the other claim, reason its takeover gives)
    ("heartbeat older than stale_s", lambda: {schema.HEARTBEAT_TAG: f"{time.time() - 100:.1f}"}, "no heartbeat for"),
    ("no heartbeat at all", lambda: {schema.HEARTBEAT_TAG: ""}, "no heartbeat for"),
    ("fresh heartbeat, process gone", lambda: {schema.PID_TAG: _gone_pid()}, "its process is gone"),
]


@pytest.mark.parametrize("case, tags, reason", TAKEOVER_CASES, ids=[c[0] for c in TAKEOVER_CASES])
def test_a_claim_that_is_not_live_is_taken_over_and_the_takeover_logged(experiment, caplog, case, tags, reason):
    other = _claim_run(experiment, "study-x", **tags())
    with caplog.at_level(logging.WARNING), tracking.claim("study-x", stale_s=60, poll_s=0.1) as mine:
        assert mine != other
    taken = experiment.get_run(other)
    assert (taken.info.status, taken.info.lifecycle_stage) == ("FAILED", "deleted")
    assert taken.data.tags[schema.ERROR_TAG].startswith(f"claim taken over by pid {os.getpid()} on ")
    assert reason in taken.data.tags[schema.ERROR_TAG]
    assert f"study-x: taking over the claim of pid {taken.data.tags[schema.PID_TAG]} on" in caplog.text


def test_a_held_claim_beats_and_a_released_one_is_ended_and_deleted(experiment):
    with tracking.claim("study-x", heartbeat_s=0.2) as run_id:
        first = float(experiment.get_run(run_id).data.tags[schema.HEARTBEAT_TAG])
        time.sleep(0.8)
        assert float(experiment.get_run(run_id).data.tags[schema.HEARTBEAT_TAG]) > first
        assert experiment.get_run(run_id).info.status == "RUNNING"
    released = experiment.get_run(run_id)
    assert (released.info.status, released.info.lifecycle_stage) == ("FINISHED", "deleted")


def test_another_keys_claim_does_not_wait(experiment):
    _claim_run(experiment, "study-y")
    started = time.time()
    with tracking.claim("study-x", poll_s=5):
        assert time.time() - started < 5


HOLD = r"""
import sys, time
from segft import tracking
tracking.use_experiment("segft", False, "claims")
with tracking.claim("study-x", heartbeat_s=0.5):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_a_live_claim_of_another_process_is_waited_for_and_named(experiment, caplog):
    uri = mlflow.get_tracking_uri()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "4"], env=_env(uri), stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING), tracking.claim("study-x", poll_s=0.2):
            theirs = experiment.search_runs([tracking.current_experiment_id()],
                                            f"tags.`{schema.CLAIM_TAG}` = 'study-x'", run_view_type=ViewType.ALL)
            assert {(r.info.status, r.info.lifecycle_stage) for r in theirs
                    if r.data.tags[schema.PID_TAG] == str(holder.pid)} == {("FINISHED", "deleted")}
        assert f"study-x is held by pid {holder.pid} on {socket.gethostname()}" in caplog.text
        assert holder.wait(timeout=30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_claimers_at_the_same_moment_hold_the_claim_one_at_a_time(experiment):
    """Six claimers (threads: their claims are as separate as processes', and start within microseconds of each
    other) race for each of three keys, the first held by a stale claim that they all take over at once; without
    the look after the write, most rounds overlap."""
    _claim_run(experiment, "study-a", **{schema.HEARTBEAT_TAG: f"{time.time() - 1000:.1f}"})
    held, barrier = [], threading.Barrier(6)

    def claimer() -> None:
        for key in ("study-a", "study-b", "study-c"):
            barrier.wait()
            with tracking.claim(key, poll_s=0.05):
                start = time.time()
                time.sleep(0.05)
                held.append((key, start, time.time()))

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(held) == 18
    for key in ("study-a", "study-b", "study-c"):
        spans = sorted((start, end) for k, start, end in held if k == key)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (key, spans)


# ------------------------------------------------------------------------------------------------ whole studies

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=4), tmp_path_factory.mktemp("data") / "study")


def _studies(n: int, work: Path, data: Path, uri: str | None) -> list[tuple[int, str, str]]:
    """``n`` ``segft study`` commands started at the same moment, each with its own report folder."""
    code = "sys.exit(segft.cli.main([*args, '--report-dir', f'report-{os.getpid()}']))"
    modules = "torch,segft.cli,segft.study,analysis.report"
    with processes(n, code, [*STUDY, "--data-dir", str(data)], work, uri, modules=modules) as started:
        return finish(started, timeout=900)


def _trained_once(uri: str) -> MlflowClient:
    """Check that every run of the study was trained, finished and registered once, and that the aliases point at
    those versions; returns the client."""
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`segft.study_id` != ''")
    keys = [r.data.tags.get(schema.RUN_KEY_TAG) for r in runs if schema.RUN_KEY_TAG in r.data.tags]
    assert sorted(keys) == sorted(STUDY_RUNS)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len([r for r in runs if r.data.tags.get(schema.ROLE_TAG) == schema.ROLE_STUDY]) == 1
    base = client.search_model_versions("name = 'segft-base'")
    finetuned = client.search_model_versions("name = 'segft-finetuned'")
    assert (len(base), len(finetuned)) == (1, 1)
    assert client.get_model_version_by_alias("segft-base", schema.BASE_ALIAS).version == base[0].version
    return client


@pytest.mark.slow
def test_four_studies_started_together_on_a_new_default_store_all_finish_and_the_store_opens(data, tmp_path):
    """Issue 22, row 1: MLflow's default store (no MLFLOW_TRACKING_URI) created by four studies at once."""
    outcomes = _studies(4, tmp_path, data, uri=None)
    assert [rc for rc, _, _ in outcomes] == [0] * 4, [err[-2000:] for _, _, err in outcomes]
    _trained_once(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sum("reused 3 finished runs" in out for _, out, _ in outcomes) == 3


@pytest.mark.slow
def test_the_same_study_started_twice_at_once_trains_and_registers_every_run_once(data, tmp_path, empty_sqlite_store):
    """Issue 22, row 2: the second start waits for the first, naming it, then reuses its runs."""
    import shutil

    shutil.copyfile(empty_sqlite_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcomes = _studies(2, tmp_path, data, uri)
    assert [rc for rc, _, _ in outcomes] == [0, 0], [err[-2000:] for _, _, err in outcomes]
    _trained_once(uri)
    waited = [err for _, _, err in outcomes if "is held by pid" in err]
    assert len(waited) == 1 and f"on {socket.gethostname()} (heartbeat" in waited[0]
    assert sum("reused 3 finished runs" in out for _, out, _ in outcomes) == 1
