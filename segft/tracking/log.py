"""What a run records: parameters (the split among them), metrics, tags and descriptions, tables, images and
figures; and a study's report, logged on its parent run afterwards."""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.tracking.multimedia import convert_to_pil_image

from segft import schema
from segft.tracking.datasets import DatasetInput
from segft.tracking.store import once_more
from segft.urls import redact

#: MLflow refuses parameter values longer than this; longer ones go to ``split.json`` only.
MAX_PARAM_LENGTH = 6000
#: MLflow's longest tag value.
MAX_TAG_LENGTH = 8000


def flatten_config(config: object) -> dict[str, object]:
    """A dataclass (nested ones included) as ``{field: value}``; field names are unique across the nesting."""
    flat: dict[str, object] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten_config(value))
        else:
            flat[field.name] = ",".join(map(str, value)) if isinstance(value, tuple) else value
    return flat


def log_params(params: dict[str, object]) -> None:
    """Log parameters, secrets in URLs hidden (``segft.urls.redact``); values over MLflow's length limit are
    replaced by a pointer to ``split.json``.

    Parameters ``mlflow run`` already logged from the MLproject (the same values, shell-quoted where empty) are
    left as they are: MLflow refuses to change a logged parameter.
    """
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params(
        {
            key: redact(str(value)) if len(str(value)) <= MAX_PARAM_LENGTH else "(see split.json)"
            for key, value in params.items()
            if key not in logged
        }
    )


def log_split(split_names: dict[str, list[str]]) -> None:
    """Log the exact file names in each part of the split as params and as ``split.json``."""
    log_params({f"{schema.SPLIT_PARAM_PREFIX}{part}": ",".join(names) for part, names in split_names.items()})
    mlflow.log_dict(split_names, schema.SPLIT_JSON)


def log_epoch(epoch: int, loss: float, branch_counts: dict[str, int]) -> None:
    """Per-epoch training loss and how many patches took each dynamic-loss branch."""
    metrics = {schema.TRAIN_LOSS_METRIC: loss,
               **{schema.loss_branch_metric(name): count for name, count in branch_counts.items()}}
    mlflow.log_metrics(metrics, step=epoch)


def log_metrics(metrics: dict[str, float], step: int | None = None, dataset: DatasetInput | None = None) -> None:
    """Log metrics on the active run, at ``step`` (an epoch, or a trial count) when given, linked to the dataset
    they were computed on when given."""
    mlflow.log_metrics(metrics, step=step, dataset=dataset.as_mlflow() if dataset else None)


def log_images(images: dict[str, np.ndarray]) -> None:
    """Log rendered images (RGB or grey uint8 arrays) by artifact path, encoded as ``mlflow.log_image`` encodes
    them (``convert_to_pil_image``, the file type from the path), in one upload: one artifact call per image
    costs a store round trip each, about 34 per trained run."""
    with tempfile.TemporaryDirectory() as folder:
        for path, image in images.items():
            target = Path(folder) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_to_pil_image(image).save(target)
        mlflow.log_artifacts(folder)


def log_figures(figures: dict[str, object]) -> None:
    """Log plotly (``.html``) or matplotlib figures on the active run, by artifact path."""
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)


def log_evaluation(table: pd.DataFrame, metrics: dict[DatasetInput, dict[str, float]],
                   images: dict[str, np.ndarray], model_id: str | None = None) -> None:
    """Log a run's test scores: the metrics, each linked to the test set it was computed on (and to the logged
    model ``model_id`` when given: the UI's model views show them by dataset), the per-image table as
    ``evaluation/per_image_dice.csv`` and the rendered overlays and predicted masks by artifact path."""
    for dataset, values in metrics.items():
        mlflow.log_metrics(values, dataset=dataset.as_mlflow(), model_id=model_id)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    mlflow.log_text(buffer.getvalue(), schema.EVALUATION_CSV)
    log_images(images)


def log_validation(table: pd.DataFrame, metrics: dict[DatasetInput, dict[str, float]], model_id: str) -> None:
    """Log validation scores (never test images): the metrics, each linked to the validation images it was
    computed on (one input per dataset) and to the logged model, and the per-image table (every dataset's rows)
    as ``evaluation/val_per_image_dice.csv``."""
    for dataset, values in metrics.items():
        mlflow.log_metrics(values, dataset=dataset.as_mlflow(), model_id=model_id)
    mlflow.log_text(table.to_csv(index=False), schema.VALIDATION_CSV)


def set_tags(tags: dict[str, str]) -> None:
    """Set tags on the active run, secrets in URLs hidden."""
    mlflow.set_tags({key: redact(str(value)) for key, value in tags.items()})


def describe_run(text: str) -> None:
    """Set the active run's description (the UI shows it on the run's page); tried once more when another process
    describing the same run (tuning workers sharing a parent) inserted the tag at the same moment."""
    once_more(lambda: mlflow.set_tag(schema.DESCRIPTION_TAG, redact(text)))


def set_model_uri_tag(model_uri: str) -> None:
    """Record the registered model of the active run, so a resumed study can reuse it without retraining."""
    mlflow.set_tag(schema.MODEL_URI_TAG, model_uri)


def set_champion_tag(model_uri: str) -> None:
    """Record on the active run (a study's parent) the model version it recommends (tag ``segft.champion``)."""
    mlflow.set_tag(schema.CHAMPION_TAG, model_uri)


def set_champion_reason(reason: str) -> None:
    """Record on the active run (a study's parent) why it recommends its champion, or why it recommends none
    (tag ``segft.champion_reason``, cut to MLflow's limit on a tag's length)."""
    limit = MAX_TAG_LENGTH
    mlflow.set_tag(schema.CHAMPION_REASON_TAG, reason if len(reason) <= limit else reason[:limit - 3] + "...")


def log_report(tracking_uri: str, run_id: str, folder: Path) -> None:
    """Log a study's report folder on its parent run ``run_id`` under ``report/`` (``schema.REPORT_DIR``), in the
    tracking store ``tracking_uri`` the report was read from (``segft analyze --tracking-uri``), which need not be
    this process's: the run is named, never the active one."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), schema.REPORT_DIR)
