"""The only module that talks to MLflow: runs, parameters, metrics, artifacts, logged and registered models.

A leaf among segft's modules: it takes plain data and files (tables, rendered images, a checkpoint folder, the
pyfunc's logging arguments) and imports nothing of segft but the names in ``segft.schema``, so it knows no
training or model code.

The tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI`` when set, else MLflow 3's default
``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import mlflow
import numpy as np
import pandas as pd
import psutil
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.environment_variables import MLFLOW_RUN_ID, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

from segft import schema
from segft.urls import redact

T = TypeVar("T")
#: MLflow refuses parameter values longer than this; longer ones go to ``split.json`` only.
MAX_PARAM_LENGTH = 6000


#: Seconds between two samples of system metrics (MLflow's default is 10 s; the runs of a quick study are short).
#: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it.
SYSTEM_METRICS_INTERVAL_S = 5


def use_experiment(name: str, system_metrics: bool, description: str) -> str:
    """Send the runs this process starts to experiment ``name`` (created if needed) and turn system metrics on or
    off for them. The experiment is tagged so that MLflow's UI opens it as model training, and described when it
    has no description yet.

    Under ``mlflow run`` MLflow's choice of experiment (``mlflow run --experiment-name``) stands: the run it
    created for this process already lives there, and the runs nested under it must too.

    Returns:
        The experiment's id.
    """
    if not MLFLOW_RUN_ID.get():
        once_more(lambda: mlflow.set_experiment(name))
    _log_system_metrics(system_metrics)
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    client = MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if schema.EXPERIMENT_KIND_TAG not in tags:
        once_more(lambda: client.set_experiment_tag(experiment_id, schema.EXPERIMENT_KIND_TAG, schema.EXPERIMENT_KIND))
    if not tags.get(schema.DESCRIPTION_TAG):
        once_more(lambda: client.set_experiment_tag(experiment_id, schema.DESCRIPTION_TAG, description))
    return experiment_id


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


@dataclasses.dataclass(frozen=True)
class DatasetInput:
    """One part of a study's data as a run's MLflow dataset input.

    Attributes:
        name: ``dataset1-train``, ``dataset2-validation``, ``dataset2-test``... (``schema.input_name``).
        context: What the run used it for (``schema.TRAINING_CONTEXT`` ...).
        source: Where the images came from: a folder, or a description of generated data.
        digest: Digest of its names, pixels and masks.
        images: How many images it holds.
    """

    name: str
    context: str
    source: str
    digest: str
    images: int

    def as_mlflow(self) -> MetaDataset:
        """MLflow's dataset entity: a local folder source, or a code source for generated data."""
        if Path(self.source).exists():
            with warnings.catch_warnings():  # a local path matches two registered source kinds, equally good
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(Path(self.source).resolve()))
        else:
            source = CodeDatasetSource(tags={"source": self.source})
        return MetaDataset(source, name=self.name, digest=self.digest)


def log_inputs(inputs: list[DatasetInput]) -> None:
    """Log each dataset input on the active run, with its context and image count (the UI's Datasets column)."""
    for item in inputs:
        once_more(lambda: mlflow.log_input(item.as_mlflow(), context=item.context, tags={"images": str(item.images)}))


def describe_run(text: str) -> None:
    """Set the active run's description (the UI shows it on the run's page); tried once more when another process
    describing the same run (tuning workers sharing a parent) inserted the tag at the same moment."""
    once_more(lambda: mlflow.set_tag(schema.DESCRIPTION_TAG, redact(text)))


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
def start_run(
    run_name: str, tags: dict[str, str], new_run: bool = False, nested: bool = False, run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, adopt) a run; it always ends in a final state: FINISHED, FAILED if the
    block raises (tag ``segft.error`` says why), KILLED on Ctrl-C or SIGTERM (``segft.cli`` turns SIGTERM into
    ``KeyboardInterrupt``). A model version registered by a run that did not finish is tagged
    ``segft.unfinished_run`` and never reused. The run is tagged with its process (``process_tags``), so that
    a resumed study can tell a dead RUNNING run from a live one (``fail_dead_runs``).

    Args:
        run_name: Shown in the MLflow UI.
        tags: Set on the run.
        new_run: Create a separate run even when ``mlflow run`` handed this process a run to adopt
            (used when ``finetune`` first has to train a base model of its own).
        nested: Start a child of the active run.
        run_id: Resume this run (a study's parent run when the study is started again).
        parent_run_id: Start a child of this run, which need not be active in this process (a Ray task's run
            under its study's parent).
    """
    tags = {**{key: redact(str(value)) for key, value in tags.items()}, **process_tags()}
    # Under `mlflow run` the run it created is handed over in MLFLOW_RUN_ID. Resuming another run leaves it there,
    # and the next nested start_run would adopt it instead of creating a child: drop it. A new separate run keeps
    # it for the command's own run to adopt afterwards (MLflow's end_run drops it: put it back).
    handed_over = MLFLOW_RUN_ID.get() if new_run else None
    if run_id is not None:
        MLFLOW_RUN_ID.unset()
    if new_run:
        experiment_id = mlflow.tracking.fluent._get_experiment_id()
        run_id = MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id
    resumed = run_id is not None
    try:
        with mlflow.start_run(run_id=run_id, run_name=None if resumed else run_name, nested=nested, tags=tags,
                              parent_run_id=parent_run_id) as run:
            if resumed:
                mlflow.set_tags(tags)
            try:
                yield run
            except KeyboardInterrupt:
                _end_unfinished(run.info.run_id, "KILLED", "interrupted (SIGINT or SIGTERM)")
                raise
            except Exception as error:
                _end_unfinished(run.info.run_id, "FAILED", f"{type(error).__name__}: {error}")
                raise
    finally:
        if handed_over:
            MLFLOW_RUN_ID.set(handed_over)


def process_tags() -> dict[str, str]:
    """This process as run tags: host name, pid and the pid's start time (a pid may be reused later)."""
    return {schema.HOST_TAG: socket.gethostname(), schema.PID_TAG: str(os.getpid()),
            schema.PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}", **_task_tags}


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process a run's tags name is known to be gone: it ran on this host and its pid is no longer
    running, or now belongs to a process started at another time. A run of another host is never known gone."""
    if tags.get(schema.HOST_TAG) != socket.gethostname() or not tags.get(schema.PID_TAG, "").isdigit():
        return False
    try:
        started = psutil.Process(int(tags[schema.PID_TAG])).create_time()
    except psutil.NoSuchProcess:
        return True
    return abs(started - float(tags.get(schema.PID_STARTED_TAG, "nan"))) > 0.5


def _end_unfinished(run_id: str, status: str, reason: str) -> None:
    """End the active run with ``status``, saying why, and retire the model versions it registered; nothing
    when the block already ended it (a pruned trial ends KILLED by itself)."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    mlflow.set_tag(schema.ERROR_TAG, redact((reason.splitlines() or [""])[0])[:500])
    retire_model_versions(run_id, status)
    mlflow.end_run(status)


def retire_model_versions(run_id: str, status: str) -> list[str]:
    """Tag every model version registered by run ``run_id`` with ``segft.unfinished_run = <status>``; those
    versions are never reused or aliased. Returns their ``models:/<name>/<version>`` URIs."""
    client = MlflowClient()
    retired = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, schema.UNFINISHED_RUN_TAG, status)
        retired.append(f"models:/{version.name}/{version.version}")
    return retired


def fail_dead_runs(filter_string: str, gone: Callable[[dict[str, str]], bool] = process_gone,
                   status: str = "FAILED", reason: str = "") -> list[str]:
    """End the RUNNING runs matching ``filter_string`` whose process is gone (``gone`` of their tags; by default
    ``process_gone``) as ``status``, saying why (``reason``, by default the process that ended), and retire their
    model versions. A study or a tuning calls this on its own runs when it is started again; a Ray task on the
    runs of its own earlier, dead attempts, and the driver on the runs of tasks that failed or were cancelled.

    Returns:
        The ids of the runs ended.
    """
    client = MlflowClient()
    marked = []
    for run in _search_all(f"{filter_string} and attributes.status = 'RUNNING'"):
        if gone(run.data.tags):
            host, pid = run.data.tags.get(schema.HOST_TAG), run.data.tags.get(schema.PID_TAG)
            client.set_tag(run.info.run_id, schema.ERROR_TAG,
                           reason or f"process {pid} on {host} ended without ending the run")
            retire_model_versions(run.info.run_id, status)
            client.set_terminated(run.info.run_id, status)
            marked.append(run.info.run_id)
    return marked


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
    log_params({f"split_{part}": ",".join(names) for part, names in split_names.items()})
    mlflow.log_dict(split_names, schema.SPLIT_JSON)


def log_epoch(epoch: int, loss: float, branch_counts: dict[str, int]) -> None:
    """Per-epoch training loss and how many patches took each dynamic-loss branch."""
    metrics = {"train_loss": loss, **{f"loss_branch_{name}": count for name, count in branch_counts.items()}}
    mlflow.log_metrics(metrics, step=epoch)


def log_images(images: dict[str, np.ndarray]) -> None:
    """Log rendered images (RGB or grey uint8 arrays) by artifact path."""
    for path, image in images.items():
        mlflow.log_image(image, path)


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


def save_model(pyfunc_arguments: dict[str, object], path: Path) -> Path:
    """Write a pyfunc (``segft.pyfunc.pyfunc_arguments``) to a local folder, no tracking store involved;
    ``mlflow.pyfunc.load_model(str(path))`` loads it. Returns ``path``."""
    mlflow.pyfunc.save_model(str(path), **pyfunc_arguments)
    return Path(path)


def log_model(pyfunc_arguments: dict[str, object], name: str) -> str:
    """Log a pyfunc (``segft.pyfunc.pyfunc_arguments``: code, checkpoint artifact, signature, input example) on
    the active run as logged model ``name`` (the run's name: ``finetune-n15-r1``); it is registered by
    ``register_model`` once it has been scored. Returns the logged model's id."""
    return mlflow.pyfunc.log_model(name=name, **pyfunc_arguments).model_id


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
    """Point ``alias`` of a registered model at the version ``models:/<name>/<version>`` (moving it if set).

    Raises:
        ValueError: If ``model_uri`` is not of that form, or its run did not finish.
    """
    name, _, version = model_uri.removeprefix("models:/").partition("/")
    if not model_uri.startswith("models:/") or not version.isdigit():
        raise ValueError(f"expected a registered model version models:/<name>/<version>, got {model_uri!r}")
    client = MlflowClient()
    unfinished = client.get_model_version(name, version).tags.get(schema.UNFINISHED_RUN_TAG)
    if unfinished:
        raise ValueError(f"{model_uri}: its run ended {unfinished}; a model of an unfinished run is never aliased")
    client.set_registered_model_alias(name, alias, version)


def load_model(model_uri: str, model_config: dict[str, str] | None = None) -> mlflow.pyfunc.PyFuncModel:
    """Load a logged segft pyfunc (``models:/segft-finetuned@champion``, ``runs:/...``, a folder...).

    Its ``MLmodel`` is read first: a model without segft's checkpoint artifact is refused before any of its code
    or pickles is loaded (its output would otherwise be written as masks).

    Raises:
        ValueError: If MLflow cannot resolve or download the URI, or the model is not a segft model.
        segft.checkpoint.CheckpointError: If the model's checkpoint is missing or was tampered with.
    """
    try:
        flavors = mlflow.models.Model.load(model_uri).flavors
        if schema.CHECKPOINT_ARTIFACT not in flavors.get("python_function", {}).get("artifacts", {}):
            raise ValueError(f"model {model_uri!r} is not a segft segmentation model (flavors: "
                             f"{', '.join(sorted(flavors)) or 'none'}); give a model logged by segft, e.g. "
                             "models:/segft-finetuned@champion")
        return mlflow.pyfunc.load_model(model_uri, model_config=model_config)
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot load model {model_uri!r}: {error.message}") from error


def log_validation(table: pd.DataFrame, metrics: dict[DatasetInput, dict[str, float]], model_id: str) -> None:
    """Log validation scores (never test images): the metrics, each linked to the validation images it was
    computed on (one input per dataset) and to the logged model, and the per-image table (every dataset's rows)
    as ``evaluation/val_per_image_dice.csv``."""
    for dataset, values in metrics.items():
        mlflow.log_metrics(values, dataset=dataset.as_mlflow(), model_id=model_id)
    mlflow.log_text(table.to_csv(index=False), schema.VALIDATION_CSV)


def read_validation_table(run_id: str) -> pd.DataFrame | None:
    """A run's ``evaluation/val_per_image_dice.csv``, or None when it had no validation images."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=schema.VALIDATION_CSV, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return pd.read_csv(local, dtype={"dataset": str, "image": str, "prediction_digest": str})


def set_champion_tag(model_uri: str) -> None:
    """Record on the active run (a study's parent) the model version it recommends (tag ``segft.champion``)."""
    mlflow.set_tag(schema.CHAMPION_TAG, model_uri)


def set_champion_reason(reason: str) -> None:
    """Record on the active run (a study's parent) why it recommends its champion, or why it recommends none
    (tag ``segft.champion_reason``, cut to MLflow's limit on a tag's length)."""
    limit = 8000  # MLflow's longest tag value
    mlflow.set_tag(schema.CHAMPION_REASON_TAG, reason if len(reason) <= limit else reason[:limit - 3] + "...")


def set_model_uri_tag(model_uri: str) -> None:
    """Record the registered model of the active run, so a resumed study can reuse it without retraining."""
    mlflow.set_tag(schema.MODEL_URI_TAG, model_uri)


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


def _search_all(filter_string: str) -> list[mlflow.entities.Run]:
    """Every run of every experiment matching ``filter_string``, newest first, following MLflow's pages."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs, token = [], None
    while True:
        page = client.search_runs(experiments, filter_string, order_by=["attributes.start_time DESC"],
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_study_runs(study_id: str) -> dict[str, mlflow.entities.Run]:
    """The study's child runs that finished, by their ``segft.run_key`` (newest wins). A trained run tags its
    model before it finishes, so every finished trained run has one; the threshold arm has none to tag."""
    runs = _search_all(f"tags.`{schema.STUDY_TAG}` = '{study_id}' and attributes.status = 'FINISHED'")
    found: dict[str, mlflow.entities.Run] = {}
    for run in runs:
        key = run.data.tags.get(schema.RUN_KEY_TAG)
        if key and key not in found:
            found[key] = run
    return found


def study_parent_to_resume(study_id: str) -> str | None:
    """The parent run of an earlier start of the same study, to resume under it; None if there is none."""
    runs = _search_all(f"tags.`{schema.STUDY_TAG}` = '{study_id}' and tags.`{schema.ROLE_TAG}` = '{schema.ROLE_STUDY}'")
    return runs[0].info.run_id if runs else None


def download_checkpoint(model_uri: str, destination: Path) -> Path:
    """Download a logged segft model and return its checkpoint folder.

    Raises:
        ValueError: If the URI cannot be resolved or holds no segft checkpoint.
    """
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    except mlflow.exceptions.MlflowException as error:
        raise ValueError(f"cannot download model {model_uri!r}: {error.message}") from error
    checkpoint = local / "artifacts" / schema.CHECKPOINT_ARTIFACT
    if not checkpoint.is_dir():
        raise ValueError(f"model {model_uri!r} is not a segft model (no artifacts/checkpoint folder)")
    return checkpoint


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
    def of_this_process(cls, system_metrics: bool) -> "Destination":
        return cls(mlflow.get_tracking_uri(), mlflow.tracking.fluent._get_experiment_id(), system_metrics)

    def attach(self) -> None:
        """Send the runs this (worker) process starts here. A run id that ``mlflow run`` handed the driver (and
        a local Ray instance passed on in the environment) is dropped: a worker never adopts the driver's run."""
        MLFLOW_RUN_ID.unset()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(experiment_id=self.experiment_id)
        _log_system_metrics(self.system_metrics)


#: Tags every run this process starts carries besides ``process_tags``'s own (a Ray task's id: ``task_tags``).
_task_tags: dict[str, str] = {}


@contextlib.contextmanager
def task_tags(tags: dict[str, str]) -> Iterator[None]:
    """Tag every run started inside the block with ``tags`` too (a Ray worker runs one task after another)."""
    _task_tags.update(tags)
    try:
        yield
    finally:
        for key in tags:
            _task_tags.pop(key, None)


def tracking_uri() -> str:
    """Where runs go: ``MLFLOW_TRACKING_URI`` when set, else MLflow's default (``sqlite:///mlflow.db``)."""
    return mlflow.get_tracking_uri()


def log_metrics(metrics: dict[str, float], step: int | None = None, dataset: DatasetInput | None = None) -> None:
    """Log metrics on the active run, at ``step`` (an epoch, or a trial count) when given, linked to the dataset
    they were computed on when given."""
    mlflow.log_metrics(metrics, step=step, dataset=dataset.as_mlflow() if dataset else None)


def set_tags(tags: dict[str, str]) -> None:
    """Set tags on the active run, secrets in URLs hidden."""
    mlflow.set_tags({key: redact(str(value)) for key, value in tags.items()})


def end_run(status: str, tags: dict[str, str]) -> None:
    """Tag the active run and end it with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``) from inside the
    ``with start_run(...)`` block, which then leaves it as it is (used for pruned tuning trials: KILLED)."""
    mlflow.set_tags(tags)
    mlflow.end_run(status)


def log_figures(figures: dict[str, object]) -> None:
    """Log plotly (``.html``) or matplotlib figures on the active run, by artifact path."""
    for path, figure in figures.items():
        mlflow.log_figure(figure, path)


def find_tuning_parent(study_name: str) -> str | None:
    """The parent run of an earlier start of tuning study ``study_name``, to resume under it; None if none."""
    runs = _search_all(f"tags.`{schema.TUNING_STUDY_TAG}` = '{study_name}' and tags.`{schema.ROLE_TAG}` = '{schema.ROLE_TUNE}'")
    return runs[0].info.run_id if runs else None
