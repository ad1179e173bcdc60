"""The only door to MLflow: runs, parameters, metrics, artifacts, logged and registered models.

A leaf among segft's modules: it takes plain data and files (tables, rendered images, a checkpoint folder, the
pyfunc's logging arguments), hands back plain data (ids, URIs, ``FinishedRun``, tables) and imports nothing of
segft but ``segft.schema`` (the names) and ``segft.urls`` (``redact``: no secret in a URL reaches the store), so it
knows no training or model code and never imports torch. It uses MLflow's public API only, and keeps no state of
its own: a Ray task's tags live in a context variable (``task_tags``), the experiment in MLflow's.

Its modules, one concern each:

- ``experiments``: where runs go (``use_experiment``, system metrics, ``Destination`` for worker processes);
- ``runs``: a run's life (``start_run``, ``end_run``, ``task_tags``, ``fail_dead_runs``);
- ``log``: what a run records (parameters, split, metrics, tables, images, figures, tags, a study's report);
- ``datasets``: the data's parts as MLflow dataset inputs with a profile and schema (``DatasetInput``,
  ``DatasetProfile``, ``log_inputs``);
- ``registry``: logged and registered models, their checkpoints and their source runs;
- ``search``: what a resumed study or tuning reads back (``finished_study_runs``, parents, validation tables);
- ``claims``: one live process per study (``claim``: a heartbeating claim that a second process waits for);
- ``prune``: deleting the model artifacts no alias, champion or unfinished study needs (``segft prune``);
- ``projects``: the run ``mlflow run`` opened, discarded when segft refuses its arguments;
- ``store``: the store opened once (a new SQLite store under a file lock), a write tried once more, a search
  followed across pages.

The tracking URI is MLflow's own: ``MLFLOW_TRACKING_URI`` when set, else MLflow 3's default
``sqlite:///mlflow.db`` in the working directory.
"""

from segft.tracking.claims import claim
from segft.tracking.datasets import DatasetInput, DatasetProfile, log_inputs
from segft.tracking.experiments import (SYSTEM_METRICS_INTERVAL_S, Destination, current_experiment_id, tracking_uri,
                                        use_experiment)
from segft.tracking.log import (MAX_PARAM_LENGTH, describe_run, flatten_config, log_epoch, log_evaluation,
                                log_figures, log_images, log_metrics, log_params, log_report, log_split,
                                log_validation, set_champion_reason, set_champion_tag, set_model_uri_tag, set_tags)
from segft.tracking.registry import (download_checkpoint, find_model_version, load_model, log_model, model_run_params,
                                     model_source_run, model_training_images, register_model, retire_model_versions,
                                     save_model, set_model_alias)
from segft.tracking.runs import end_run, fail_dead_runs, process_gone, process_tags, start_run, task_tags
from segft.tracking.search import (FinishedRun, find_tuning_parent, finished_study_runs, read_validation_table,
                                   study_parent_to_resume)
from segft.tracking.store import RunRecord, once_more, open_store, search_pages, sqlite_lock

__all__ = [
    "MAX_PARAM_LENGTH", "SYSTEM_METRICS_INTERVAL_S", "DatasetInput", "DatasetProfile", "Destination", "FinishedRun",
    "RunRecord", "claim",
    "current_experiment_id", "describe_run", "download_checkpoint", "end_run", "fail_dead_runs", "find_model_version",
    "find_tuning_parent", "finished_study_runs", "flatten_config", "load_model", "log_epoch", "log_evaluation",
    "log_figures", "log_images", "log_inputs", "log_metrics", "log_model", "log_params", "log_report", "log_split",
    "log_validation", "model_run_params", "model_source_run", "model_training_images", "once_more", "open_store",
    "process_gone", "process_tags", "read_validation_table", "search_pages", "register_model", "retire_model_versions",
    "save_model", "set_champion_reason", "set_champion_tag", "set_model_alias", "set_model_uri_tag", "set_tags",
    "sqlite_lock", "start_run", "study_parent_to_resume", "task_tags", "tracking_uri", "use_experiment",
]
