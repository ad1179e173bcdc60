"""How segft reaches the tracking store: opened once, under a file lock when it is a local SQLite file; a write
tried once more when two processes race for the same row; a search followed across MLflow's pages."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

T = TypeVar("T")


def sqlite_file(url: str) -> Path | None:
    """The file of a local SQLite database URL (``sqlite:///mlflow.db`` in the working directory,
    ``sqlite:////abs/mlflow.db``), or None: an in-memory database, a ``file:`` URI database or another kind of URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # a server's http(s) URI, a file store's path
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or "uri" in parsed.query:
        return None
    return Path(database).absolute()


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """Hold, for the block, a file lock beside the local SQLite database ``url`` names (``mlflow.db.lock`` beside
    ``mlflow.db``), so that the processes of one machine create or upgrade its tables one after the other; any
    other URL (a server, a database server, an in-memory database) takes no lock, nor does a file whose folder
    does not exist (opening it fails with the database's own error)."""
    path = sqlite_file(url)
    with FileLock(f"{path}.lock") if path and path.parent.is_dir() else contextlib.nullcontext():
        yield


def open_store(tracking_uri: str | None = None) -> None:
    """Open the tracking store and its model registry (``tracking_uri``, by default this process's: MLflow 3's
    default is ``sqlite:///mlflow.db`` in the working directory), creating their tables when the store is new.

    MLflow creates the tables of a new SQLite store the first time a process opens it, with migrations that are not
    safe to run twice at once: processes starting together on a new store each run them, crash, and leave the store
    unreadable ("table _alembic_tmp_experiments already exists"). Here the first open happens under ``sqlite_lock``;
    MLflow keeps the opened store for the rest of the process.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    with sqlite_lock(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def once_more(write: Callable[[], T]) -> T:
    """Run a write to the store, and once more after a short random pause if MLflow refused it.

    Two processes opening the same new experiment, logging the same dataset or describing the same run at the
    same moment can both find the row missing and both insert it (MLflow's server looks a row up, then inserts
    it): the loser gets a unique violation, and its second try finds the row and succeeds.
    """
    try:
        return write()
    except mlflow.exceptions.MlflowException:
        time.sleep(random.uniform(0.2, 1.0))
        return write()


@dataclass(frozen=True)
class RunRecord:
    """A run as plain data, what segft and its analysis read of one: MLflow's own ``Run`` objects stay inside
    this package.

    Attributes:
        run_id: The MLflow run id.
        experiment_id: Its experiment.
        status: ``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``.
        tags: Its tags (segft's, ``segft.*``, and MLflow's own).
        params: Its parameters, as the strings MLflow keeps.
        metrics: The latest value of each of its metrics.
    """

    run_id: str
    experiment_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @classmethod
    def of(cls, run: mlflow.entities.Run) -> RunRecord:
        return cls(run.info.run_id, run.info.experiment_id, run.info.status, dict(run.data.tags),
                   dict(run.data.params), dict(run.data.metrics))


def search_all(filter_string: str) -> list[RunRecord]:
    """Every run of every experiment matching ``filter_string``, newest first, following MLflow's pages."""
    client = MlflowClient()
    return search_pages(client, [e.experiment_id for e in client.search_experiments()], filter_string)


def search_pages(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[RunRecord]:
    """Every run of ``experiment_ids`` matching ``filter_string``, newest first, following MLflow's pages (also
    ``analysis.query``'s, with its own client)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=["attributes.start_time DESC"],
                                  max_results=1000, page_token=token)
        runs.extend(RunRecord.of(run) for run in page)
        token = page.token
        if not token:
            return runs
