"""How segft reaches the tracking store: a write tried once more when two processes race for the same row, and a
search followed across MLflow's pages."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import mlflow
from mlflow import MlflowClient

T = TypeVar("T")


def once_more(write: Callable[[], T]) -> T:
    """Run a write to the store, and once more after a short random pause if MLflow refused it.

    Two processes opening the same new experiment, logging the same dataset or describing the same run at the
    same moment can both find the row missing and both insert it (MLflow's server looks a row up, then inserts it): the loser gets a unique
    violation, and its second try finds the row and succeeds.
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
