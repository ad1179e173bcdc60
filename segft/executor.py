"""Ray as the executor of a study's runs and a tuning's workers (``--executor ray``).

The command that starts them (the driver) keeps what it does in process: the data, the parent run, the threshold
arm, the aliases, the report. Each Ray task sends its runs where the driver's go (``tracking.Destination``) and
starts them as children of the driver's parent run. Ray starts a task once its resources are free
(``cpus_per_run``, ``gpus_per_run``; a fraction of a GPU shares it) and once the tasks whose results it takes as
arguments are done: a fine-tuning run waits for its base model. Every task's PyTorch gets the session's thread
count, which the driver resolved (``segft.machine.resolve_threads``) and which its runs log.

Failures, so that no run is left RUNNING (Ray's fault-tolerance rules: tasks are retried when their worker dies,
https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html):

- a task whose worker dies is started again, ``task_retries`` times; the new attempt first marks the runs of the
  dead one FAILED (an attempt keeps its task's id; tag ``segft.ray_task`` = the session's id and the task's);
- a task that fails for good: once every task has ended, the driver marks its runs still RUNNING FAILED and
  raises its error (the others' runs are kept, for a resumed study to reuse);
- the driver interrupted (Ctrl-C, SIGTERM): the tasks are stopped and their runs marked KILLED. A local instance
  the driver started is shut down, which ends every worker; ``ray.cancel`` is kept for a cluster or a session
  that is not ours, because it races a task that is just returning and Ray's task manager then aborts the driver
  ("Tried to complete task that was not pending", the race of ray-project/ray#54798; seen in CI with Ray 2.60).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import torch
from tqdm.auto import tqdm

from segft import schema, tracking
from segft.config import ExecutorConfig
from segft.machine import resolve_threads

T = TypeVar("T")
#: Set in every worker: the driver shows one progress bar over the tasks, and the workers' warnings and errors
#: (printed by the driver, prefixed with the task's name) are not lost among progress bars and MLflow's notes.
WORKER_ENVIRONMENT = {"TQDM_DISABLE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                      "MLFLOW_LOGGING_LEVEL": "WARNING"}
#: Seconds to wait for a Ray cluster's address to answer.
CONNECT_TIMEOUT_S = 5
#: Seconds between two looks of the driver at its tasks.
WAIT_S = 1.0
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


def check_executor(config: ExecutorConfig) -> None:
    """Before any run starts: Ray is installed when asked for, and a cluster at ``host:port`` answers (Ray itself
    would wait minutes for one that does not).

    Raises:
        ValueError: In one line, saying what to do.
    """
    if config.executor != "ray":
        return
    require_ray()
    host, _, port = config.ray_address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return  # empty (a local instance) or "auto" (Ray finds a running one, or says there is none)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ValueError(f"Ray cluster at {config.ray_address!r} does not answer ({error}); start it with "
                         "`ray start --head` or give another --ray-address") from error


@contextlib.contextmanager
def ray_session(config: ExecutorConfig, destination: tracking.Destination, threads: int = 0) -> Iterator[RaySession]:
    """Connect to ``config.ray_address`` (or start a local Ray instance) for the block; disconnect after it.

    A session already open in this process (a notebook's ``ray.init``) is used as it is and left open.

    Args:
        config: Where and with which resources the tasks run.
        destination: Where their runs go.
        threads: PyTorch threads of every task: the runs' resolved ``TrainConfig.threads``; 0 resolves it from
            ``config`` (``cpus_per_run`` rounded down, at least 1).
    """
    ray = require_ray()
    threads = resolve_threads(threads, config)
    if ray.is_initialized():
        yield RaySession(ray, config, destination, threads)
        return
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    ray.init(address=config.ray_address or None, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": WORKER_ENVIRONMENT})
    for number, handler in handlers.items():  # Ray's own would exit (SIGTERM) or abort: keep segft.cli's
        signal.signal(number, handler)
    try:
        yield RaySession(ray, config, destination, threads, owns_instance=True)
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class RaySession:
    """Tasks submitted with ``config``'s resources and retries, each with ``threads`` PyTorch threads, their runs
    going to ``destination``.

    ``id`` tells this session's tasks from another driver's: Ray numbers the tasks of every new local instance
    the same way, so a task's id alone would not name its runs on a shared tracking server.
    """

    ray: Any
    config: ExecutorConfig
    destination: tracking.Destination
    threads: int
    #: Whether this driver started the Ray instance (``ray.init`` without an address): stopping it may end it.
    owns_instance: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def put(self, value: Any) -> Any:
        """``value`` in Ray's object store, sent once to every worker that takes it as an argument."""
        return self.ray.put(value)

    def submit(self, name: str, function: Callable[..., T], *args: Any) -> Any:
        """Start ``function(*args)`` as a Ray task named ``name``. Arguments that are object refs (another task's
        result) are waited for and resolved first.

        Returns:
            The task's object ref.
        """
        remote = self.ray.remote(_run_task).options(
            num_cpus=self.config.cpus_per_run, num_gpus=self.config.gpus_per_run,
            max_retries=self.config.task_retries, name=name)
        return remote.remote(self.destination, self.id, self.threads, function, *args)

    def gather(self, tasks: dict[str, Any], description: str) -> dict[str, Any]:
        """Wait for every task, with a progress bar; their results by key.

        Raises:
            Exception: The first task's error (by key order) once every task has ended, after the runs left
                RUNNING by the tasks that failed are marked FAILED. On KeyboardInterrupt the tasks still going are
                stopped and their runs marked KILLED.
        """
        ray = self.ray
        pending = {ref: key for key, ref in tasks.items()}
        results, errors = {}, {}
        try:
            with tqdm(total=len(tasks), desc=description, unit="task") as bar:
                while pending:
                    # a timeout, so that Ctrl-C and SIGTERM (segft.cli: KeyboardInterrupt) are handled within a second
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                    if not done:
                        continue
                    key = pending.pop(done[0])
                    try:
                        results[key] = ray.get(done[0])
                    except Exception as error:  # the task's own error, or Ray's (worker died after its last try)
                        errors[key] = error
                    bar.update()
        except BaseException:
            self._stop(list(pending))
            self._end_runs_of(list(pending), "KILLED", "its Ray task was cancelled (the command was stopped)")
            raise
        if errors:
            self._end_runs_of([tasks[key] for key in errors], "FAILED", "its Ray task failed")
            first = errors[min(errors, key=list(tasks).index)]
            raise getattr(first, "cause", None) or first  # the task's own exception, without Ray's wrapper
        return results

    def _stop(self, refs: list[Any]) -> None:
        """End the tasks of ``refs``: the whole instance when it is ours, else each task (see the module's note)."""
        if self.owns_instance:
            self.ray.shutdown()  # its workers exit with their raylet
            return
        for ref in refs:
            self.ray.cancel(ref, force=True)
        self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)

    def _end_runs_of(self, refs: list[Any], status: str, reason: str) -> None:
        for ref in refs:
            _end_task_runs(self.id, ref.task_id().hex(), status, reason)


def _run_task(destination: tracking.Destination, session_id: str, threads: int, function: Callable[..., T],
              *args: Any) -> T:
    """A task's body, in the worker: runs to ``destination``, ``threads`` PyTorch threads, the runs of this
    task's dead earlier attempts marked FAILED, then ``function(*args)`` with every run tagged with the task."""
    import ray

    destination.attach()
    torch.set_num_threads(threads)
    task_id = ray.get_runtime_context().get_task_id()
    # Ray starts a task again only once its worker died: a RUNNING run of an earlier attempt is dead
    _end_task_runs(session_id, task_id, "FAILED")
    with tracking.task_tags({schema.RAY_TASK_TAG: _task_tag(session_id, task_id)}):
        return function(*args)


def _task_tag(session_id: str, task_id: str) -> str:
    return f"{session_id}/{task_id}"


def _end_task_runs(session_id: str, task_id: str, status: str, reason: str = "") -> None:
    """End the RUNNING runs of one task (tag ``segft.ray_task``) as ``status``: its process is known to be gone."""
    tracking.fail_dead_runs(f"tags.`{schema.RAY_TASK_TAG}` = '{_task_tag(session_id, task_id)}'",
                            gone=lambda tags: True, status=status, reason=reason)
