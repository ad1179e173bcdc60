"""Ray as the executor of a study's runs and a tuning's workers (``--executor ray``).

The command that starts them (the driver) keeps what it does in process: the data, the parent run, the threshold
arm, the aliases, the report. Each Ray task sends its runs where the driver's go (``tracking.Destination``) and
starts them as children of the driver's parent run. Ray starts a task once its resources are free
(``cpus_per_run``, ``gpus_per_run``; a fraction of a GPU shares it) and once the tasks whose results it takes as
arguments are done: a fine-tuning run waits for its base model.

Failures, so that no run is left RUNNING (Ray's fault-tolerance rules: tasks are retried when their worker dies,
https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html):

- a task whose worker dies is started again, ``task_retries`` times; the new attempt first marks the runs of the
  dead one FAILED (an attempt keeps its task's id, tag ``segft.ray_task``);
- a task that fails for good: once every task has ended, the driver marks its runs still RUNNING FAILED and
  raises its error (the others' runs are kept, for a resumed study to reuse);
- the driver interrupted (Ctrl-C, SIGTERM): the tasks are cancelled and their runs marked KILLED.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, TypeVar

import torch
from tqdm.auto import tqdm

from segft import schema, tracking
from segft.config import ExecutorConfig

T = TypeVar("T")
#: Set in every worker: the driver shows one progress bar over the tasks, and the workers' warnings and errors
#: (printed by the driver, prefixed with the task's name) are not lost among progress bars and MLflow's notes.
WORKER_ENVIRONMENT = {"TQDM_DISABLE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                      "MLFLOW_LOGGING_LEVEL": "WARNING"}
#: Seconds the driver waits for cancelled tasks to end before it marks their runs KILLED.
CANCEL_GRACE_S = 10


def require_ray():
    """The ``ray`` module.

    Raises:
        ValueError: When Ray is not installed, saying how to install it.
    """
    try:
        import ray
    except ImportError as error:
        raise ValueError("executor 'ray' needs Ray: pip install 'segft[ray]'") from error
    return ray


@contextlib.contextmanager
def ray_session(config: ExecutorConfig) -> Iterator[Any]:
    """Connect to ``config.ray_address`` (or start a local Ray instance) for the block; disconnect after it.

    A session already open in this process (a notebook's ``ray.init``) is used as it is and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=config.ray_address or None, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": WORKER_ENVIRONMENT})
    try:
        yield ray
    finally:
        ray.shutdown()


def submit(ray: Any, config: ExecutorConfig, destination: tracking.Destination, name: str,
           function: Callable[..., T], *args: Any) -> Any:
    """Start ``function(*args)`` as a Ray task with ``config``'s resources and retries; its runs go to
    ``destination``. Arguments that are Ray object refs (another task's result) are waited for and resolved
    first.

    Returns:
        The task's object ref.
    """
    remote = ray.remote(_run_task).options(num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run,
                                           max_retries=config.task_retries, name=name)
    return remote.remote(destination, max(1, math.floor(config.cpus_per_run)), function, *args)


def _run_task(destination: tracking.Destination, threads: int, function: Callable[..., T], *args: Any) -> T:
    """A task's body, in the worker: runs to ``destination``, ``threads`` PyTorch threads, the runs of this
    task's dead earlier attempts marked FAILED, then ``function(*args)`` with every run tagged with the task."""
    import ray

    destination.attach()
    torch.set_num_threads(threads)
    task_id = ray.get_runtime_context().get_task_id()
    tracking.fail_dead_runs(_task_filter(task_id), gone=lambda tags: True)  # Ray retries a task only once it died
    with tracking.task_tags({schema.RAY_TASK_TAG: task_id}):
        return function(*args)


def gather(ray: Any, tasks: dict[str, Any], description: str) -> dict[str, Any]:
    """Wait for every task, with a progress bar; their results by key.

    Raises:
        Exception: The first task's error (by key order) once every task has ended, after the runs left RUNNING
            by the tasks that failed are marked FAILED. On KeyboardInterrupt the tasks still going are cancelled
            and their runs marked KILLED.
    """
    pending = {ref: key for key, ref in tasks.items()}
    results, errors = {}, {}
    try:
        with tqdm(total=len(tasks), desc=description, unit="run") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                key = pending.pop(done[0])
                try:
                    results[key] = ray.get(done[0])
                except Exception as error:  # the task's own error, or Ray's (worker died after its last retry)
                    errors[key] = error
                bar.update()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)
        _end_runs_of([tasks[key] for key in pending.values()], "KILLED", "its Ray task was cancelled")
        raise
    if errors:
        _end_runs_of([tasks[key] for key in errors], "FAILED", "its Ray task failed")
        first = errors[min(errors, key=list(tasks).index)]
        raise getattr(first, "cause", None) or first  # the task's own exception, without Ray's wrapper
    return results


def _end_runs_of(refs: list[Any], status: str, reason: str) -> None:
    for ref in refs:
        tracking.fail_dead_runs(_task_filter(ref.task_id().hex()), gone=lambda tags: True, status=status,
                                reason=reason)


def _task_filter(task_id: str) -> str:
    return f"tags.`{schema.RAY_TASK_TAG}` = '{task_id}'"
