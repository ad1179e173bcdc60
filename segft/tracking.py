"""The only module that talks to MLflow: runs, parameters, metrics, artifacts, logged and registered models.

The tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI`` when set, else MLflow 3's default
``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import segft
from segft.overlays import overlay
from segft.training import EpochLog, ImageResult

ROLE_TAG = "segft.role"
DIGEST_TAG = "segft.data_digest"
ENCODER_TAG = "segft.encoder"
#: MLflow refuses parameter values longer than this; longer ones go to ``split.json`` only.
MAX_PARAM_LENGTH = 6000
#: The model's input: a stack of single-channel images (N, H, W); output: uint8 masks of the same shape.
MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
)


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


@contextlib.contextmanager
def start_run(run_name: str, tags: dict[str, str], new_run: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, adopt) a run; it ends FINISHED, or FAILED if the block raises.

    Args:
        run_name: Shown in the MLflow UI.
        tags: Set on the run.
        new_run: Create a separate run even when ``mlflow run`` handed this process a run to adopt
            (used when ``finetune`` first has to train a base model of its own).
    """
    run_id = None
    if new_run:
        experiment_id = mlflow.tracking.fluent._get_experiment_id()
        run_id = MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
    with mlflow.start_run(run_id=run_id, run_name=None if new_run else run_name, tags=tags) as run:
        yield run


def log_params(params: dict[str, object]) -> None:
    """Log parameters; values over MLflow's length limit are replaced by a pointer to ``split.json``.

    Parameters ``mlflow run`` already logged from the MLproject (the same values, shell-quoted where empty) are
    left as they are: MLflow refuses to change a logged parameter.
    """
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params(
        {
            key: value if len(str(value)) <= MAX_PARAM_LENGTH else "(see split.json)"
            for key, value in params.items()
            if key not in logged
        }
    )


def log_split(split_names: dict[str, list[str]]) -> None:
    """Log the exact file names in each part of the split as params and as ``split.json``."""
    log_params({f"split_{part}": ",".join(names) for part, names in split_names.items()})
    mlflow.log_dict(split_names, "split.json")


def log_epoch(log: EpochLog) -> None:
    """Per-epoch training loss and how many patches took each dynamic-loss branch."""
    metrics = {"train_loss": log.loss}
    metrics.update({f"loss_branch_{name}": count for name, count in log.branch_counts.items()})
    mlflow.log_metrics(metrics, step=log.epoch)


def evaluation_table(results: list[ImageResult]) -> pd.DataFrame:
    """One row per test image: dataset, image, dice, tp, fp, fn."""
    return pd.DataFrame(
        [
            {"dataset": r.dataset, "image": r.name, "dice": r.dice, "tp": r.counts.tp, "fp": r.counts.fp, "fn": r.counts.fn}
            for r in results
        ]
    )


def log_evaluation(results: list[ImageResult], images: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Log ``test_dice_<dataset>`` metrics, ``evaluation/per_image_dice.csv`` and one overlay PNG per test image.

    Args:
        results: Predictions of every test image.
        images: ``(dataset, name) -> (image, mask)`` for the overlays.

    Returns:
        The logged per-dataset mean Dice metrics.
    """
    table = evaluation_table(results)
    metrics = {f"test_dice_{dataset}": float(dice) for dataset, dice in table.groupby("dataset")["dice"].mean().items()}
    mlflow.log_metrics(metrics)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    mlflow.log_text(buffer.getvalue(), "evaluation/per_image_dice.csv")
    for result in results:
        image, mask = images[(result.dataset, result.name)]
        mlflow.log_image(overlay(image, mask, result.prediction), f"overlays/{result.dataset}/{result.name}.png")
    return metrics


def log_model(checkpoint_dir: Path, registered_name: str, version_tags: dict[str, str]) -> tuple[str, str]:
    """Log the checkpoint as a whole-image pyfunc (models-from-code) and register it.

    Returns:
        The registered model URI (``models:/<name>/<version>``) and the version.
    """
    package_dir = Path(segft.__file__).parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package_dir / "mlflow_model.py"),
        artifacts={"checkpoint": str(checkpoint_dir)},
        code_paths=[str(package_dir)],
        signature=MODEL_SIGNATURE,
        pip_requirements=["mlflow", "torch", "torchvision", "segmentation-models-pytorch", "numpy",
                          "opencv-python-headless", "pandas", "tifffile", "tqdm"],
        registered_model_name=registered_name,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in version_tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    return f"models:/{registered_name}/{version}", version


def find_model_version(name: str, tags: dict[str, str]) -> str | None:
    """URI of the newest version of registered model ``name`` whose tags include ``tags``, or None."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    matching = [v for v in versions if all(v.tags.get(k) == value for k, value in tags.items())]
    if not matching:
        return None
    newest = max(matching, key=lambda v: int(v.version))
    return f"models:/{name}/{newest.version}"


def download_checkpoint(model_uri: str, destination: Path) -> Path:
    """Download a logged segft model and return its checkpoint folder.

    Raises:
        ValueError: If the URI cannot be resolved or holds no segft checkpoint.
    """
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot download model {model_uri!r}: {error.message}") from error
    checkpoint = local / "artifacts" / "checkpoint"
    if not checkpoint.is_dir():
        raise ValueError(f"model {model_uri!r} is not a segft model (no artifacts/checkpoint folder)")
    return checkpoint


def model_source_run(model_uri: str) -> str | None:
    """The run that logged a registered model version, for lineage tags; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    name, _, version = model_uri[len("models:/") :].partition("/")
    if not version.isdigit():
        return None
    return MlflowClient().get_model_version(name, version).run_id


def log_json(data: dict, artifact_file: str) -> None:
    """Log a dict as a JSON artifact."""
    mlflow.log_text(json.dumps(data, indent=2, default=str), artifact_file)
