"""The run ``mlflow run`` opened for this process (``MLFLOW_RUN_ID``) when segft refuses its arguments: a command
that never started leaves no FAILED run behind."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from segft import schema
from segft.urls import redact


def discard_project_run(reason: str) -> str | None:
    """Delete the run ``mlflow run`` opened for this process, whose command line segft refused.

    ``mlflow run -P nonsense=1`` creates a run, logs the ``-P`` values on it and passes them on as flags; segft
    refuses an unknown flag before it starts anything, and ``mlflow run`` would end the run FAILED: a run that
    holds nothing but a typo. Such a run is ended FAILED with ``reason`` in its ``segft.error`` tag, then deleted
    (MLflow's soft delete: ``mlflow runs restore --run-id <id>`` brings it back, ``mlflow gc`` removes it for
    good). Only a run that is nothing else is touched: RUNNING, opened by ``mlflow run`` (its entry-point tag),
    without metrics and without segft's tags; anything else (``MLFLOW_RUN_ID`` set by hand to continue a run, a
    store that cannot be reached) is left as it is, as is the error line already printed.

    Args:
        reason: The error line, written to the run's ``segft.error`` tag (URL secrets hidden).

    Returns:
        The id of the run deleted, or None.
    """
    run_id = MLFLOW_RUN_ID.get()
    if not run_id:
        return None
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        untouched = not run.data.metrics and schema.ROLE_TAG not in run.data.tags
        if run.info.status != "RUNNING" or MLFLOW_PROJECT_ENTRY_POINT not in run.data.tags or not untouched:
            return None
        client.set_tag(run_id, schema.ERROR_TAG, redact(" ".join(reason.split()))[:500])
        client.set_terminated(run_id, "FAILED")
        client.delete_run(run_id)
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    return run_id
