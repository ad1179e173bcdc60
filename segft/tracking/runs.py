"""A run's life: started (or adopted, or resumed), tagged with the process and task that ran it, and always ended
in a final state; the runs of processes that died are ended by whoever finds them."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from contextvars import ContextVar
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import mlflow
import psutil
from mlflow import MlflowClient
from mlflow.entities import SourceType
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from segft import schema
from segft.tracking.experiments import current_experiment_id
from segft.tracking.registry import retire_model_versions
from segft.tracking.store import search_all
from segft.urls import redact

#: Tags every run started in the current context carries besides ``process_tags``'s own (a Ray task's id), set
#: only by ``task_tags``: a context variable, so that a task's tags never outlive its block or leak into another
#: thread's runs, and an immutable mapping, so that nobody changes them behind its back.
_TASK_TAGS: ContextVar[Mapping[str, str]] = ContextVar("segft_task_tags", default=MappingProxyType({}))


@contextlib.contextmanager
def task_tags(tags: dict[str, str]) -> Iterator[None]:
    """Tag every run started inside the block with ``tags`` too (a Ray worker runs one task after another)."""
    token = _TASK_TAGS.set(MappingProxyType({**_TASK_TAGS.get(), **tags}))
    try:
        yield
    finally:
        _TASK_TAGS.reset(token)


def process_tags() -> dict[str, str]:
    """This process as run tags: host name, pid and the pid's start time (a pid may be reused later), and the
    tags of the task it runs (``task_tags``)."""
    return {schema.HOST_TAG: socket.gethostname(), schema.PID_TAG: str(os.getpid()),
            schema.PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}", **_TASK_TAGS.get()}


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


#: The tags a child run copies from its parent: where it came from (``mlflow.source.name``, ``.type``, ``.git.*``)
#: and, under ``mlflow run``, the MLproject entry point.
_SOURCE_TAG_PREFIX = "mlflow.source."


def source_tags(origin_run_id: str | None) -> dict[str, str]:
    """Where a new run came from, as MLflow's source tags, so that the UI's Source column names the command.

    A child run copies its parent's source tags (``mlflow.source.*`` and ``mlflow.project.entryPoint``): its own
    process is ``python -m segft`` (MLflow would name ``__main__.py``) or a Ray worker (Ray's ``default_worker.py``),
    while its parent names the command (``segft study``) or, under ``mlflow run``, the project and entry point
    (shown as ``main:study``). A run without a parent started by the ``segft`` command line is named after the
    command (``segft study``, source type ``LOCAL``); any other process keeps MLflow's own tags (empty here).

    Args:
        origin_run_id: The run the new run's source is copied from: its parent, or the run ``mlflow run`` handed
            over when the new run is a separate one beside it; None for a run without either.
    """
    if origin_run_id:
        tags = MlflowClient().get_run(origin_run_id).data.tags
        return {key: value for key, value in tags.items()
                if key.startswith(_SOURCE_TAG_PREFIX) or key == MLFLOW_PROJECT_ENTRY_POINT}
    command = _segft_command(sys.argv)
    if command is None:
        return {}
    return {MLFLOW_SOURCE_NAME: command, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}


def _segft_command(argv: list[str]) -> str | None:
    """``segft <command>`` when this process runs segft's command line (the ``segft`` console script or
    ``python -m segft``), else None. The command line parser takes no option before the command's name."""
    if len(argv) < 2 or not argv[1] or argv[1].startswith("-"):
        return None
    main = os.path.basename(argv[0]) if argv[0] else ""
    is_package_main = main == "__main__.py" and os.path.basename(os.path.dirname(argv[0])) == "segft"
    return f"segft {argv[1]}" if main == "segft" or is_package_main else None


@contextlib.contextmanager
def start_run(
    run_name: str, tags: dict[str, str], new_run: bool = False, nested: bool = False, run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, adopt) a run; it always ends in a final state: FINISHED, FAILED if the
    block raises (tag ``segft.error`` says why), KILLED on Ctrl-C or SIGTERM (``segft.cli`` turns SIGTERM into
    ``KeyboardInterrupt``) and on ``SystemExit`` (a Ray worker exits so when a stopped driver shuts its cluster
    down; MLflow alone would end the run FAILED without a reason). A model version registered by a run that did not finish is tagged
    ``segft.unfinished_run`` and never reused. The run is tagged with its process (``process_tags``), so that
    a resumed study can tell a dead RUNNING run from a live one (``fail_dead_runs``). A new run of the ``segft``
    command names the command as its source (``source_tags``: ``segft study``, or the ``mlflow run`` entry point
    its parent names), not ``__main__.py`` or a Ray worker's script.

    System metrics (``use_experiment``) are logged on runs without a parent only; a child run (``nested`` or
    ``parent_run_id``) logs none. MLflow samples the whole machine (``psutil``: every CPU, all memory), not the
    run's process, so a child's chart would repeat its parent's over a shorter window and could not tell
    concurrent siblings apart; a quick study's child runs last seconds to a minute, which gave them 1-5 samples;
    and each sample costs the store a read. The parent spans the whole study and samples every
    ``SYSTEM_METRICS_INTERVAL_S`` seconds. Its first CPU sample reads 0 %: MLflow takes it the moment the run
    starts, over no time (psutil's ``cpu_percent`` measures since its previous call).

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
    child = nested or parent_run_id is not None
    if new_run or (run_id is None and not MLFLOW_RUN_ID.get()):  # a run created now, not adopted or resumed
        active = mlflow.active_run() if nested else None
        # a separate run beside the one `mlflow run` handed over came from the same entry point
        tags = {**source_tags(parent_run_id or (active.info.run_id if active else None) or handed_over), **tags}
    if new_run:
        run_id = MlflowClient().create_run(current_experiment_id(), tags=tags, run_name=run_name).info.run_id
    resumed = run_id is not None
    try:
        with mlflow.start_run(run_id=run_id, run_name=None if resumed else run_name, nested=nested, tags=tags,
                              parent_run_id=parent_run_id, log_system_metrics=False if child else None) as run:
            if resumed:
                mlflow.set_tags(tags)
            try:
                yield run
            except KeyboardInterrupt:
                _end_unfinished(run.info.run_id, "KILLED", "interrupted (SIGINT or SIGTERM)")
                raise
            except (SystemExit, GeneratorExit):  # a Ray worker told to exit as its cluster shuts down
                _end_unfinished(run.info.run_id, "KILLED", SYSTEM_EXIT_REASON)
                raise
            except Exception as error:
                _end_unfinished(run.info.run_id, "FAILED", f"{type(error).__name__}: {error}")
                raise
    finally:
        if handed_over:
            MLFLOW_RUN_ID.set(handed_over)


def end_run(status: str, tags: dict[str, str]) -> None:
    """Tag the active run and end it with ``status`` (``FINISHED``, ``FAILED`` or ``KILLED``) from inside the
    ``with start_run(...)`` block, which then leaves it as it is (used for pruned tuning trials: KILLED)."""
    mlflow.set_tags(tags)
    mlflow.end_run(status)


def _end_unfinished(run_id: str, status: str, reason: str) -> None:
    """End the active run with ``status``, saying why, and retire the model versions it registered; nothing
    when the block already ended it (a pruned trial ends KILLED by itself)."""
    active = mlflow.active_run()
    if active is None or active.info.run_id != run_id:
        return
    mlflow.set_tag(schema.ERROR_TAG, redact((reason.splitlines() or [""])[0])[:500])
    retire_model_versions(run_id, status)
    mlflow.end_run(status)


#: Why a run ended KILLED when its process was told to exit (``SystemExit``) inside the run.
SYSTEM_EXIT_REASON = "its process was told to exit (a Ray worker whose cluster was shut down)"


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
    for run in search_all(f"{filter_string} and attributes.status = 'RUNNING'"):
        if gone(run.tags):
            host, pid = run.tags.get(schema.HOST_TAG), run.tags.get(schema.PID_TAG)
            client.set_tag(run.run_id, schema.ERROR_TAG,
                           reason or f"process {pid} on {host} ended without ending the run")
            retire_model_versions(run.run_id, status)
            client.set_terminated(run.run_id, status)
            marked.append(run.run_id)
    return marked
