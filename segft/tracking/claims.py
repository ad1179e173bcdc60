"""One live process at a time per study: a claim, held while a process runs the study, that a second process of
the same study waits for.

A claim is a run of its own in the study's experiment, named ``claim <key>`` and tagged with what it claims
(``segft.claim``), its process (host, pid and the pid's start time: ``process_tags``) and a heartbeat
(``segft.heartbeat``, seconds since the epoch) that a daemon thread renews every ``HEARTBEAT_INTERVAL_S``. It is
live while it is RUNNING, its heartbeat is younger than ``STALE_AFTER_S`` and its process is not known to be gone
(``process_gone``: on this host, a pid that no longer runs). A claim that is not live is taken over: the takeover
is logged as a warning, and the old claim ends FAILED, tag ``segft.error`` saying who took it over and why.

``claim`` is a compare-after-write: a process first waits while another holds a live claim (saying once who),
then creates its own and looks again; finding another live claim beside its own, it withdraws and tries again
after a random pause. Of two processes claiming at the same moment at most one wins, since each looks after it
wrote and the later look sees the earlier claim; both may withdraw, and then one of them wins on a later try. A
released claim ends FINISHED, and is deleted as a taken-over one is (MLflow keeps deleted runs until ``mlflow gc``),
so that the experiment lists only the claims in force.

Heartbeats compare the owner's clock with the reader's: hosts sharing a tracking server need clocks that agree
(NTP) to well within ``STALE_AFTER_S``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from segft import schema
from segft.tracking.experiments import current_experiment_id
from segft.tracking.runs import process_gone, process_tags
from segft.tracking.store import search_pages

#: Seconds between two heartbeats of a held claim.
HEARTBEAT_INTERVAL_S = 30.0
#: A claim whose heartbeat is older than this is stale (its process hangs, or died on another host) and is taken
#: over; six missed heartbeats, so that a busy store or a paused process does not lose its claim.
STALE_AFTER_S = 180.0
#: Seconds between two looks of a process waiting for another's claim.
POLL_S = 5.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """A live claim: its run, its process and how long ago it last said it was alive."""

    run_id: str
    host: str
    pid: str
    heartbeat_age_s: float

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


@contextlib.contextmanager
def claim(key: str, heartbeat_s: float = HEARTBEAT_INTERVAL_S, stale_s: float = STALE_AFTER_S,
          poll_s: float = POLL_S) -> Iterator[str]:
    """Hold ``key`` for the block: wait while another live process holds it, take over a stale claim, and renew
    the heartbeat every ``heartbeat_s`` seconds from a daemon thread until the block ends. Yields the claim's run
    id. A process killed while it holds the claim leaves it RUNNING: on this host the next claim takes it over at
    once, elsewhere once its heartbeat is ``stale_s`` seconds old.

    Args:
        key: What is claimed (``study-<study id>``), in the experiment this process's runs go to.
        heartbeat_s: Seconds between two heartbeats.
        stale_s: Age of the last heartbeat after which another process's claim is taken over.
        poll_s: Seconds between two looks while waiting.
    """
    client = MlflowClient()
    run_id = _acquire(client, current_experiment_id(), key, stale_s, poll_s)
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(client, run_id, heartbeat_s, stop), daemon=True,
                            name=f"segft-heartbeat-{key}")
    beat.start()
    try:
        yield run_id
    finally:
        stop.set()
        beat.join()
        _release(client, run_id)


def _acquire(client: MlflowClient, experiment_id: str, key: str, stale_s: float, poll_s: float) -> str:
    waited_for = None
    while True:
        owners = _live(client, experiment_id, key, stale_s)
        if owners:
            if owners[0].run_id != waited_for:
                waited_for = owners[0].run_id
                _log.warning("%s is held by %s (heartbeat %.0f s ago): waiting for it to end", key, owners[0],
                             owners[0].heartbeat_age_s)
            time.sleep(poll_s)
            continue
        tags = {schema.CLAIM_TAG: key, **process_tags(), schema.HEARTBEAT_TAG: _now(),
                schema.DESCRIPTION_TAG: f"{key} is being run by this process; its claim ends when it does"}
        run_id = client.create_run(experiment_id, tags=tags, run_name=f"claim {key}").info.run_id
        if not [owner for owner in _live(client, experiment_id, key, stale_s) if owner.run_id != run_id]:
            return run_id
        _release(client, run_id)  # another process claimed at the same moment: both may withdraw, then retry
        time.sleep(random.uniform(0.1, 1.0))


def _live(client: MlflowClient, experiment_id: str, key: str, stale_s: float) -> list[Owner]:
    """The live claims of ``key``, oldest first; any other RUNNING claim of it is taken over (ended FAILED and
    deleted)."""
    found = search_pages(client, [experiment_id],
                         f"tags.`{schema.CLAIM_TAG}` = '{key}' and attributes.status = 'RUNNING'")
    owners, me = [], process_tags()
    for run in reversed(found):  # newest first as searched
        owner = Owner(run.run_id, run.tags.get(schema.HOST_TAG, "?"), run.tags.get(schema.PID_TAG, "?"),
                      _age_s(run.tags.get(schema.HEARTBEAT_TAG, "")))
        why = ("its process is gone" if process_gone(run.tags) else
               f"no heartbeat for {owner.heartbeat_age_s:.0f} s" if owner.heartbeat_age_s > stale_s else None)
        if why is None:
            owners.append(owner)
            continue
        _log.warning("%s: taking over the claim of %s: %s", key, owner, why)
        try:
            client.set_tag(run.run_id, schema.ERROR_TAG,
                           f"claim taken over by pid {me[schema.PID_TAG]} on {me[schema.HOST_TAG]}: {why}")
            client.set_terminated(run.run_id, "FAILED")
            client.delete_run(run.run_id)
        except MlflowException:  # another process took it over at the same moment, and deleted it first
            pass
    return owners


def _beat(client: MlflowClient, run_id: str, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            client.set_tag(run_id, schema.HEARTBEAT_TAG, _now())
        except Exception as error:  # a missed beat is what staleness allows for; the thread must not die of it
            _log.debug("heartbeat of claim %s failed: %s", run_id, error)


def _release(client: MlflowClient, run_id: str) -> None:
    """End a claim FINISHED and delete it; when the store refuses, the claim goes stale on its own."""
    try:
        client.set_terminated(run_id, "FINISHED")
        client.delete_run(run_id)
    except Exception as error:  # releasing must not hide the error that ended the block
        _log.warning("could not release claim %s (%s); it goes stale in %.0f s", run_id, error, STALE_AFTER_S)


def _now() -> str:
    return f"{time.time():.1f}"


def _age_s(heartbeat: str) -> float:
    """Seconds since a heartbeat; infinite for a claim without one."""
    try:
        return time.time() - float(heartbeat)
    except ValueError:
        return float("inf")
