"""What a resumed study or tuning reads back from the store, as plain data: the finished child runs of a study,
the parent run to resume under, a run's validation table."""

from __future__ import annotations

import dataclasses
import tempfile

import mlflow
import pandas as pd

from segft import schema
from segft.tracking.store import search_all


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished child run of a study, as much of it as a resumed study reuses.

    Attributes:
        run_id: The MLflow run id.
        model_uri: The registered model version it recorded (tag ``segft.model_uri``); empty for the threshold
            arm, which trains no model.
        metrics: Its latest value of each metric (``test_*``, ``val_*``, ...).
    """

    run_id: str
    model_uri: str
    metrics: dict[str, float]


def finished_study_runs(study_id: str) -> dict[str, FinishedRun]:
    """The study's child runs that finished, by their ``segft.run_key`` (newest wins). A trained run tags its
    model before it finishes, so every finished trained run has one; the threshold arm has none to tag."""
    runs = search_all(f"tags.`{schema.STUDY_TAG}` = '{study_id}' and attributes.status = 'FINISHED'")
    found: dict[str, FinishedRun] = {}
    for run in runs:
        key = run.tags.get(schema.RUN_KEY_TAG)
        if key and key not in found:
            found[key] = FinishedRun(run.run_id, run.tags.get(schema.MODEL_URI_TAG, ""),
                                     dict(run.metrics))
    return found


def study_parent_to_resume(study_id: str) -> str | None:
    """The parent run of an earlier start of the same study, to resume under it; None if there is none."""
    runs = search_all(f"tags.`{schema.STUDY_TAG}` = '{study_id}' and tags.`{schema.ROLE_TAG}` = '{schema.ROLE_STUDY}'")
    return runs[0].run_id if runs else None


def find_tuning_parent(study_name: str) -> str | None:
    """The parent run of an earlier start of tuning study ``study_name``, to resume under it; None if none."""
    runs = search_all(f"tags.`{schema.TUNING_STUDY_TAG}` = '{study_name}' and tags.`{schema.ROLE_TAG}` = '{schema.ROLE_TUNE}'")
    return runs[0].run_id if runs else None


def read_validation_table(run_id: str) -> pd.DataFrame | None:
    """A run's ``evaluation/val_per_image_dice.csv``, or None when it had no validation images."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=schema.VALIDATION_CSV, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return pd.read_csv(local, dtype={"dataset": str, "image": str, "prediction_digest": str})
