"""Deleting the logged models nothing needs any more (``segft prune``); runs, metrics, other artifacts and reports
stay.

Every trained run logs and registers its model (4.3 MB each in the quickstart's study, 26 of them), and a study
needs few of them once it has finished. A logged model is **kept** when

- a version of it carries an alias (``champion``, ``base`` or any other, in any registered model);
- it is a study's champion (its parent run's ``segft.champion`` tag), of any study, in any experiment, or the
  base model that champion started from (the one the study points ``base`` at: its lineage, and what a re-run of
  the finished study aliases again);
- it belongs to a study that has not finished (its parent RUNNING, FAILED or KILLED: a resumed study reuses its
  finished runs, downloads their base models and aliases its champion), or is the base model one of that study's
  runs starts from;
- its run is still RUNNING, or such a run starts from it;
- it is the base model of a tuning study (a tuning study can always be continued, and refuses another base);
- it was not logged by a segft run (no ``segft.role`` tag): segft never deletes another project's models.

Every other model logged by a segft run is **deleted**: first its registered versions (so that no later command
picks it as a base model: ``finetune``, ``study`` and ``tune`` train a new one when the settings come back), then
its artifacts, then the logged model itself (MLflow's soft delete: hidden, its metadata kept until ``mlflow gc``).
A run's own page keeps its parameters, metrics, evaluation tables, overlays and predicted masks, and a study's
report, which reads only those, builds as before. Deleting in that order lets a prune that stopped halfway be
run again.

MLflow's public API has no call that deletes artifacts; ``mlflow gc`` itself deletes them through the artifact
repository of their location, and so does ``delete_model``, so a tracking server that serves artifacts
(``mlflow-artifacts:``), S3, a shared folder... all work alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from segft import schema
from segft.tracking.store import RunRecord, search_pages


@dataclass(frozen=True)
class ModelSpace:
    """A logged model and what deleting it frees.

    Attributes:
        model_id: MLflow's logged model id (``m-...``).
        name: Its name: the run name of the run that logged it (``finetune-n5-r1``).
        run_id: The run that logged it.
        versions: Its registered versions, ``models:/<name>/<version>``.
        size: Bytes of its artifacts.
        kept_because: Why it is kept; empty for a model that is (or, in a dry run, would be) deleted.
    """

    model_id: str
    name: str
    run_id: str
    versions: tuple[str, ...]
    size: int
    kept_because: str = ""


@dataclass(frozen=True)
class PruneResult:
    """What ``prune_models`` deleted (or, in a dry run, would delete) and what it kept, and why."""

    deleted: tuple[ModelSpace, ...]
    kept: tuple[ModelSpace, ...]
    dry_run: bool

    @property
    def freed(self) -> int:
        """Bytes of artifacts deleted (or that would be)."""
        return sum(model.size for model in self.deleted)


def prune_models(experiment: str = "", dry_run: bool = False) -> PruneResult:
    """Delete the logged models that nothing needs (the rules are the module's), or only list them.

    Args:
        experiment: Experiment whose segft models may be deleted; empty for every experiment. What is needed is
            looked up in every experiment either way.
        dry_run: List only; delete nothing.

    Raises:
        ValueError: If ``experiment`` names no experiment.
    """
    client = MlflowClient()
    experiments = _all_pages(lambda token: client.search_experiments(page_token=token))
    chosen = [e.experiment_id for e in experiments if not experiment or e.name == experiment]
    if experiment and not chosen:
        raise ValueError(f"experiment {experiment!r} does not exist; give one of "
                         f"{sorted(e.name for e in experiments)[:10]} or leave it empty for every experiment")
    runs = {run.run_id: run for run in search_pages(client, [e.experiment_id for e in experiments], "")}
    models = _all_pages(lambda token: client.search_logged_models(chosen, page_token=token)) if chosen else []
    resolve = _Resolver(models, _all_pages(lambda token: client.search_model_versions(page_token=token)),
                        _all_pages(lambda token: client.search_registered_models(page_token=token)))
    needed = _needed(runs, resolve)
    deleted, kept = [], []
    for model in models:
        source = runs.get(model.source_run_id) or _deleted_run(client, model.source_run_id)
        if source is None or schema.ROLE_TAG not in source.tags:
            continue  # not segft's
        versions = resolve.versions_of(model.model_id)
        space = ModelSpace(model.model_id, model.name, model.source_run_id or "",
                           tuple(f"models:/{v.name}/{v.version}" for v in versions), _size(client, model.model_id),
                           needed.get(model.model_id, ""))
        (kept if space.kept_because else deleted).append(space)
        if not space.kept_because and not dry_run:
            _delete(client, model, versions)
    return PruneResult(tuple(deleted), tuple(kept), dry_run)


def _needed(runs: dict[str, RunRecord], resolve: _Resolver) -> dict[str, str]:
    """``{model id: why it is kept}`` by the module's rules (the first reason found)."""
    needed: dict[str, str] = {}

    def keep(model_ids: Iterable[str], why: str) -> None:
        for model_id in model_ids:
            needed.setdefault(model_id, why)

    for (name, alias), model_id in sorted(resolve.aliases.items()):
        keep([model_id] if model_id else [], f"alias {alias} of models:/{name}@{alias}")
    studies = [run for run in runs.values() if run.tags.get(schema.ROLE_TAG) == schema.ROLE_STUDY]
    for parent in studies:
        study_id = parent.tags.get(schema.STUDY_TAG, "")
        champion = parent.tags.get(schema.CHAMPION_TAG, "")
        keep(resolve(champion), f"champion of study {study_id}")
        for run in runs.values():  # the base model the champion started from: the study points `base` at it
            if champion and run.tags.get(schema.MODEL_URI_TAG) == champion:
                keep(resolve(run.params.get(schema.BASE_MODEL_URI_PARAM, "")),
                     f"base model of the champion of study {study_id}")
        if parent.status != "FINISHED":
            for run in runs.values():
                if run.tags.get(schema.STUDY_TAG) == study_id:
                    keep(resolve.by_run.get(run.run_id, []), f"study {study_id} has not finished ({parent.status})")
                    keep(resolve(run.params.get(schema.BASE_MODEL_URI_PARAM, "")),
                         f"base model of unfinished study {study_id}")
    for run in runs.values():
        if run.status == "RUNNING":
            name = run.tags.get(MLFLOW_RUN_NAME, run.run_id)
            keep(resolve.by_run.get(run.run_id, []), f"run {name} is RUNNING")
            keep(resolve(run.params.get(schema.BASE_MODEL_URI_PARAM, "")), f"base model of RUNNING run {name}")
        if run.tags.get(schema.ROLE_TAG) == schema.ROLE_TUNE:
            keep(resolve(run.params.get(schema.BASE_MODEL_URI_PARAM, "")),
                 f"base model of tuning study {run.tags.get(schema.TUNING_STUDY_TAG, '')}")
    return needed


class _Resolver:
    """The logged models that model URIs and registered versions name: ``models:/<name>/<version>``,
    ``models:/<name>@<alias>``, ``models:/<model id>`` or ``runs:/<run id>/<model name>``; none for anything else (a
    local folder, an empty parameter, a model of an experiment not searched)."""

    def __init__(self, models: list[LoggedModel], versions: list[ModelVersion], registered: list) -> None:
        self.by_run: dict[str, list[str]] = {}
        self.names = {model.model_id: model.name for model in models}
        for model in models:
            self.by_run.setdefault(model.source_run_id or "", []).append(model.model_id)
        # MLflow fills a version's model_id from some stores only; its source is the logged model's URI
        self.versions = {(v.name, str(v.version)): (v, v.model_id or next(iter(self(v.source or "")), None))
                         for v in versions}
        self.aliases = {(r.name, alias): self.versions.get((r.name, str(version)), (None, None))[1]
                        for r in registered for alias, version in (r.aliases or {}).items()}

    def __call__(self, uri: str) -> list[str]:
        if uri.startswith("runs:/"):
            run_id, _, name = uri.removeprefix("runs:/").partition("/")
            return [m for m in self.by_run.get(run_id, []) if self.names[m] == name]
        if not uri.startswith("models:/"):
            return []
        reference = uri.removeprefix("models:/")
        name, slash, version = reference.partition("/")
        if slash:
            found = self.versions.get((name, version), (None, None))[1]
        elif "@" in reference:
            found = self.aliases.get(tuple(reference.split("@", 1)))
        else:
            found = reference  # models:/<model id>
        return [found] if found else []

    def versions_of(self, model_id: str) -> list[ModelVersion]:
        """The registered versions of a logged model."""
        return [version for version, found in self.versions.values() if found == model_id]


def _deleted_run(client: MlflowClient, run_id: str | None) -> RunRecord | None:
    """A run that the search left out (deleted runs are not searched), or None when there is none."""
    if not run_id:
        return None
    try:
        return RunRecord.of(client.get_run(run_id))
    except mlflow.exceptions.MlflowException:  # a run removed by `mlflow gc`: its model is no one's
        return None


def _size(client: MlflowClient, model_id: str, path: str | None = None) -> int:
    """Bytes of a logged model's artifacts (under ``path``)."""
    return sum(_size(client, model_id, item.path) if item.is_dir else item.file_size or 0
               for item in client.list_logged_model_artifacts(model_id, path))


def _delete(client: MlflowClient, model: LoggedModel, versions: list[ModelVersion]) -> None:
    """Delete a logged model's registered versions, its artifacts, then the logged model."""
    for version in versions:
        client.delete_model_version(version.name, version.version)
    get_artifact_repository(model.artifact_location).delete_artifacts()
    client.delete_logged_model(model.model_id)


def _all_pages(search) -> list:
    """Every item of a paged MLflow search (``search(page_token)``)."""
    items, token = [], None
    while True:
        page = search(token)
        items.extend(page)
        token = page.token
        if not token:
            return items
