"""Where runs go: the experiment (chosen by name, or handed over by ``mlflow run``), system metrics, and the
``Destination`` a worker process attaches to so that its runs go where its driver's go.

Only MLflow's public API: the experiment a process chose is the one ``mlflow.set_experiment`` returned, which
MLflow also keeps in ``MLFLOW_EXPERIMENT_ID`` (``mlflow run`` sets that variable for the run it hands over).
"""

from __future__ import annotations

import dataclasses

import mlflow
from mlflow import MlflowClient
from mlflow.environment_variables import (MLFLOW_EXPERIMENT_ID, MLFLOW_RUN_ID,
                                          MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)

from segft import schema
from segft.tracking.store import once_more, open_store

#: Seconds between two samples of system metrics (MLflow's default is 10 s; the runs of a quick study are short).
#: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it.
SYSTEM_METRICS_INTERVAL_S = 5


def use_experiment(name: str, system_metrics: bool, description: str) -> str:
    """Send the runs this process starts to experiment ``name`` (created if needed) and turn system metrics on or
    off for them. The experiment is tagged so that MLflow's UI opens it as model training, and described when it
    has no description yet. The store is opened first (``open_store``: a new local SQLite store is created under a
    file lock, so that commands started together on it do not break it).

    Under ``mlflow run`` MLflow's choice of experiment (``mlflow run --experiment-name``) stands: the run it
    created for this process already lives there, and the runs nested under it must too.

    Returns:
        The experiment's id.
    """
    open_store()
    handed_over = MLFLOW_RUN_ID.get()
    if handed_over:
        experiment_id = MlflowClient().get_run(handed_over).info.experiment_id
    else:
        experiment_id = once_more(lambda: mlflow.set_experiment(name)).experiment_id
    _log_system_metrics(system_metrics)
    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if schema.EXPERIMENT_KIND_TAG not in tags:
        once_more(lambda: client.set_experiment_tag(experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND))
    if not tags.get(schema.DESCRIPTION_TAG):
        once_more(lambda: client.set_experiment_tag(experiment_id, schema.DESCRIPTION_TAG, description))
    return experiment_id


def current_experiment_id() -> str:
    """The experiment this process's new runs go to: the one ``use_experiment`` or ``Destination.attach`` set
    (``mlflow.set_experiment`` keeps it in ``MLFLOW_EXPERIMENT_ID`` for subprocesses to inherit), or the one
    ``mlflow run`` handed over in that same variable.

    Raises:
        RuntimeError: If no experiment was chosen (``use_experiment`` was not called).
    """
    experiment_id = MLFLOW_EXPERIMENT_ID.get()
    if not experiment_id:
        raise RuntimeError("no MLflow experiment chosen for this process's runs: call tracking.use_experiment first")
    return experiment_id


def tracking_uri() -> str:
    """Where runs go: ``MLFLOW_TRACKING_URI`` when set, else MLflow's default (``sqlite:///mlflow.db``)."""
    return mlflow.get_tracking_uri()


def _log_system_metrics(on: bool) -> None:
    if on:
        mlflow.enable_system_metrics_logging()
        if not MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get():
            mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    else:
        mlflow.disable_system_metrics_logging()


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where this process's runs go, handed to worker processes (Ray tasks) so that theirs go there too."""

    tracking_uri: str
    experiment_id: str
    system_metrics: bool

    @classmethod
    def of_this_process(cls, system_metrics: bool) -> Destination:
        return cls(mlflow.get_tracking_uri(), current_experiment_id(), system_metrics)

    def attach(self) -> None:
        """Send the runs this (worker) process starts here. A run id that ``mlflow run`` handed the driver (and
        a local Ray instance passed on in the environment) is dropped: a worker never adopts the driver's run."""
        MLFLOW_RUN_ID.unset()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)
        _log_system_metrics(self.system_metrics)
