"""Logged and registered models: save, log, register, alias, find and retire versions, download a checkpoint,
load a pyfunc, and trace a version back to the run that logged it (its parameters and training images)."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from segft import schema
from segft.urls import redact


def save_model(pyfunc_arguments: dict[str, object], path: Path) -> Path:
    """Write a pyfunc (``segft.pyfunc.pyfunc_arguments``) to a local folder, no tracking store involved;
    ``mlflow.pyfunc.load_model(str(path))`` loads it. Returns ``path``."""
    mlflow.pyfunc.save_model(str(path), **pyfunc_arguments)
    return Path(path)


def log_model(pyfunc_arguments: dict[str, object], name: str) -> str:
    """Log a pyfunc (``segft.pyfunc.pyfunc_arguments``: code, checkpoint artifact, signature, input example) on
    the active run as logged model ``name`` (the run's name: ``finetune-n15-r1``), linked to the data it was
    trained on (``link_training_data``); it is registered by ``register_model`` once it has been scored. Returns
    the logged model's id."""
    model_id = mlflow.pyfunc.log_model(name=name, **pyfunc_arguments).model_id
    link_training_data(model_id)
    return model_id


def link_training_data(model_id: str) -> list[str]:
    """Link a logged model to the active run's training dataset inputs: the run's last ``train_loss`` is logged
    once more as ``final_train_loss`` with the model and each training input. MLflow links a model to data only
    through metrics (a model version's page shows no datasets; its logged model's "Datasets used" lists the data
    of its metrics), and the scores link only the validation and test data.

    Returns:
        The names of the training inputs linked; none when the run logged no training loss or training input.
    """
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    history = client.get_metric_history(run_id, schema.TRAIN_LOSS_METRIC)
    run = client.get_run(run_id)
    training = [item.dataset for item in run.inputs.dataset_inputs
                if {tag.key: tag.value for tag in item.tags}.get(MLFLOW_DATASET_CONTEXT) == schema.TRAINING_CONTEXT]
    if not history or not training:
        return []
    last = max(history, key=lambda metric: (metric.step, metric.timestamp))
    client.log_batch(run_id, metrics=[
        Metric(schema.FINAL_TRAIN_LOSS_METRIC, last.value, int(time.time() * 1000), last.step, model_id=model_id,
               dataset_name=dataset.name, dataset_digest=dataset.digest, run_id=run_id) for dataset in training])
    return [dataset.name for dataset in training]


def register_model(model_id: str, registered_name: str, version_tags: dict[str, str], description: str,
                   model_description: str) -> tuple[str, str]:
    """Register a logged model as a new version of ``registered_name``, tagging and describing the version.

    Args:
        model_id: The logged model (``log_model``).
        registered_name: Registered model to add a version to.
        version_tags: Tags of the new version.
        description: The new version's description.
        model_description: The registered model's description, set when it has none.

    Returns:
        The registered model URI (``models:/<name>/<version>``) and the version.
    """
    version = mlflow.register_model(f"models:/{model_id}", registered_name).version
    client = MlflowClient()
    for key, value in version_tags.items():
        client.set_model_version_tag(registered_name, version, key, redact(str(value)))
    client.update_model_version(registered_name, version, description=redact(description))
    if not client.get_registered_model(registered_name).description:
        client.update_registered_model(registered_name, description=model_description)
    return f"models:/{registered_name}/{version}", str(version)


def set_model_alias(model_uri: str, alias: str) -> None:
    """Point ``alias`` of a registered model at the version ``models:/<name>/<version>`` (moving it if set; an alias
    that already points there is left as it is: a resumed study does not move its aliases again).

    Raises:
        ValueError: If ``model_uri`` is not of that form, or its run did not finish.
    """
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    if not model_uri.startswith("models:/") or not version.isdigit():
        raise ValueError(f"expected a registered model version models:/<name>/<version>, got {model_uri!r}")
    client = MlflowClient()
    found = client.get_model_version(name, version)
    unfinished = found.tags.get(schema.UNFINISHED_RUN_TAG)
    if unfinished:
        raise ValueError(f"{model_uri}: its run ended {unfinished}; a model of an unfinished run is never aliased")
    if alias not in found.aliases:
        client.set_registered_model_alias(name, alias, version)


def retire_model_versions(run_id: str, status: str) -> list[str]:
    """Tag every model version registered by run ``run_id`` with ``segft.unfinished_run = <status>``; those
    versions are never reused or aliased. Returns their ``models:/<name>/<version>`` URIs."""
    client = MlflowClient()
    retired = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, schema.UNFINISHED_RUN_TAG, status)
        retired.append(f"models:/{version.name}/{version.version}")
    return retired


def find_model_version(name: str, tags: dict[str, str]) -> str | None:
    """URI of the newest version of registered model ``name`` whose tags include ``tags`` and whose run
    finished (a version of a failed, killed or still running run is never reused), or None."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    matching = [v for v in versions if all(v.tags.get(k) == value for k, value in tags.items())
                and schema.UNFINISHED_RUN_TAG not in v.tags]
    for version in sorted(matching, key=lambda v: -int(v.version)):
        if client.get_run(version.run_id).info.status == "FINISHED":
            return f"models:/{name}/{version.version}"
    return None


def load_model(model_uri: str, model_config: dict[str, str] | None = None) -> mlflow.pyfunc.PyFuncModel:
    """Load a logged segft pyfunc (``models:/segft-finetuned@champion``, ``runs:/...``, a folder...) with MLflow.

    MLflow's loader runs the model's logged code (``mlflow_model.py`` and the packaged ``segft``): load only models
    from stores you trust. ``segft predict`` does not use it: it downloads the checkpoint (``download_checkpoint``)
    and rebuilds the network with the installed segft (``segft.pyfunc.SegmentationModel``).

    Its ``MLmodel`` is read first: a model without segft's checkpoint artifact is refused before any of its code
    or pickles is loaded (its output would otherwise be written as masks).

    Raises:
        ValueError: If MLflow cannot resolve or download the URI, or the model is not a segft model.
        segft.checkpoint.CheckpointError: If the model's checkpoint is missing or was tampered with.
    """
    checkpoint_path(model_uri)
    try:
        return mlflow.pyfunc.load_model(model_uri, model_config=model_config)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot load model {model_uri!r}: {error.message}") from error


def checkpoint_path(model_uri: str) -> str:
    """Where a logged segft model keeps its checkpoint, relative to the model's folder (``artifacts/checkpoint``),
    read from its ``MLmodel`` alone.

    Raises:
        ValueError: If MLflow cannot resolve the URI or read its ``MLmodel``, or the model is not a segft model
            (no checkpoint artifact, or one outside the model's folder).
    """
    try:
        flavors = mlflow.models.Model.load(model_uri).flavors
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot load model {model_uri!r}: {error.message}") from error
    artifact = flavors.get("python_function", {}).get("artifacts", {}).get(schema.CHECKPOINT_ARTIFACT)
    if not isinstance(artifact, dict) or not isinstance(artifact.get("path"), str):
        raise ValueError(f"model {model_uri!r} is not a segft segmentation model (flavors: "
                         f"{', '.join(sorted(flavors)) or 'none'}); give a model logged by segft, e.g. "
                         "models:/segft-finetuned@champion")
    path = PurePosixPath(artifact["path"])
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"model {model_uri!r} is not a segft segmentation model (its checkpoint path {path} lies "
                         "outside the model)")
    return str(path)


def download_checkpoint(model_uri: str, destination: Path) -> Path:
    """Download a logged segft model into ``destination`` and return its checkpoint folder; nothing is loaded.

    The model's ``MLmodel`` is read first (``checkpoint_path``): a model that is not segft's is refused before its
    files are downloaded. None of its code is imported: rebuild the network from the folder with
    ``segft.checkpoint.load_checkpoint`` (``model.json`` + weights read with ``weights_only``).

    Raises:
        ValueError: If the URI cannot be resolved or downloaded, or holds no segft checkpoint.
    """
    relative = checkpoint_path(model_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot download model {model_uri!r}: {error.message}") from error
    checkpoint = local / relative
    if not checkpoint.is_dir():
        raise ValueError(f"model {model_uri!r} is not a segft model (no {relative} folder)")
    return checkpoint


def model_source_run(model_uri: str) -> str | None:
    """The run that logged a registered model version (``models:/<name>/<version>`` or ``models:/<name>@<alias>``),
    for lineage tags and checks; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    reference = model_uri[len("models:/") :]
    name, _, version = reference.partition("/")
    if version.isdigit():
        return MlflowClient().get_model_version(name, version).run_id
    name, _, alias = reference.partition("@")
    return MlflowClient().get_model_version_by_alias(name, alias).run_id if alias else None


def model_run_params(model_uri: str) -> dict[str, str]:
    """The parameters of the run that logged a registered model version; empty for other URIs."""
    run_id = model_source_run(model_uri)
    return MlflowClient().get_run(run_id).data.params if run_id else {}


def model_training_images(model_uri: str) -> list[str]:
    """The names of the images the run behind a registered model version trained on (its ``split.json``);
    empty when unknown."""
    run_id = model_source_run(model_uri)
    if not run_id:
        return []
    try:
        return list(mlflow.artifacts.load_dict(f"runs:/{run_id}/{schema.SPLIT_JSON}").get("train", []))
    except (mlflow.exceptions.MlflowException, OSError, ValueError):
        return []
