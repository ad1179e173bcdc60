"""Find a study in the tracking store and read its runs back as one tidy table of per-image Dice.

Everything goes through ``MlflowClient`` (runs, params, tags and artifacts), so the analysis reads a local
store and a remote ``mlflow server`` alike. The tags and artifacts read here are the ones ``segft.tracking``
writes: ``segft.role`` = ``study`` on the parent run, ``segft.study_id``, ``segft.run_key`` and ``segft.arm`` on
every child, and each child's ``evaluation/per_image_dice.csv``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
from mlflow import MlflowClient

from segft.schema import ARM_TAG, EVALUATION_CSV, ROLE_STUDY, ROLE_TAG, RUN_KEY_TAG, STUDY_TAG
from segft.tracking import RunRecord, search_pages
TIDY_COLUMNS = ["run_id", "arm", "n_images", "repeat", "dataset", "image", "dice"]
#: Per-image columns a tidy table carries when the runs logged them: pixel counts and the mask's digest.
COUNT_COLUMNS = ["tp", "fp", "fn", "prediction_digest"]


@dataclass(frozen=True)
class Study:
    """A study's parent run and its finished child runs (one per ``segft.run_key``, the newest)."""

    study_id: str
    parent: RunRecord
    children: tuple[RunRecord, ...]


def _experiment_ids(client: MlflowClient, experiment: str) -> list[str]:
    if not experiment:
        return [e.experiment_id for e in client.search_experiments()]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no experiment named {experiment!r} in tracking store {client.tracking_uri}")
    return [found.experiment_id]


def find_study_parent(client: MlflowClient, study_id: str = "", experiment: str = "") -> RunRecord:
    """The parent run of study ``study_id``, or of the newest study when ``study_id`` is empty.

    Args:
        client: Client of the tracking store to search.
        study_id: The study's ``segft.study_id`` tag; empty for the newest study.
        experiment: Experiment name to search; empty for all experiments.

    Raises:
        ValueError: If ``study_id`` is malformed, or the experiment or a matching study parent run does not exist.
    """
    if study_id and not re.fullmatch(r"[0-9A-Za-z_-]+", study_id):
        raise ValueError(f"study id must be letters, digits, '_' or '-' (e.g. 8ec8fb0ecc7b), got {study_id!r}")
    query = f"tags.`{ROLE_TAG}` = '{ROLE_STUDY}'"
    if study_id:
        query += f" and tags.`{STUDY_TAG}` = '{study_id}'"
    runs = search_pages(client, _experiment_ids(client, experiment), query)
    if not runs:
        what = f"study {study_id!r}" if study_id else "study"
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        raise ValueError(f"no {what} parent run (tag {ROLE_TAG}=study) in {where} of tracking store "
                         f"{client.tracking_uri}; run `segft study` first or check --tracking-uri")
    return runs[0]


def read_study(client: MlflowClient, study_id: str = "", experiment: str = "") -> Study:
    """Find a study (see ``find_study_parent``) and its finished child runs, one per run key (newest wins).

    Raises:
        ValueError: If there is no such study, or it has no finished child runs.
    """
    parent = find_study_parent(client, study_id, experiment)
    sid = parent.tags[STUDY_TAG]
    runs = search_pages(client, [parent.experiment_id],
                        f"tags.`{STUDY_TAG}` = '{sid}' and attributes.status = 'FINISHED'")
    children: dict[str, Run] = {}
    for run in runs:
        key = run.tags.get(RUN_KEY_TAG)
        if key and run.tags.get(ROLE_TAG) != ROLE_STUDY and key not in children:
            children[key] = run
    if not children:
        raise ValueError(f"study {sid} (parent run {parent.run_id}) has no finished child runs yet")
    return Study(sid, parent, tuple(children.values()))


def run_coordinates(run: RunRecord) -> dict[str, object]:
    """A child run's place in the study: run_id, arm, n_images, repeat (the raw model: ``raw``, 0, 0)."""
    tags, params = run.tags, run.params
    arm = tags.get(ARM_TAG) or tags.get(ROLE_TAG, "")
    return {"run_id": run.run_id, "arm": arm, "n_images": int(params.get("n_images", 0)),
            "repeat": int(params.get("repeat", 0))}


def download(client: MlflowClient, run_id: str, path: str, destination: str | Path) -> Path:
    """Download a run's artifact file or folder through the client; returns its local path.

    MLflow draws a progress bar per download unless told otherwise; a report downloads dozens of small files,
    so the bar is off here unless the user set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` themselves.

    Raises:
        ValueError: If the artifact cannot be downloaded (missing, or the store refuses).
    """
    try:
        with _artifact_progress_bar_off():
            return Path(client.download_artifacts(run_id, path, str(destination)))
    except Exception as error:  # each artifact store raises its own types
        raise ValueError(f"cannot download artifact {path!r} of run {run_id}: {error}") from error


@contextlib.contextmanager
def _artifact_progress_bar_off() -> Iterator[None]:
    """Turn MLflow's download progress bar off for the block, unless the user chose a setting themselves."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    chosen = name in os.environ
    if not chosen:
        os.environ[name] = "false"
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop(name, None)


def tidy_table(client: MlflowClient, study: Study) -> pd.DataFrame:
    """One row per (child run, dataset, test image), with columns ``TIDY_COLUMNS``.

    Raises:
        ValueError: If a run's evaluation table is missing or lacks the dataset/image/dice columns.
    """
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in study.children:
            local = download(client, run.run_id, EVALUATION_CSV, tmp)
            # Image names such as "004" must stay strings.
            table = pd.read_csv(local, dtype={"dataset": str, "image": str, "prediction_digest": str})
            local.unlink()
            missing = {"dataset", "image", "dice"} - set(table.columns)
            if missing:
                raise ValueError(f"{EVALUATION_CSV} of run {run.run_id} lacks columns {sorted(missing)}")
            extra = [c for c in COUNT_COLUMNS if c in table.columns]  # runs logged before they existed lack them
            frames.append(table[["dataset", "image", "dice", *extra]].assign(**run_coordinates(run)))
    tidy = pd.concat(frames, ignore_index=True)
    tidy = tidy[TIDY_COLUMNS + [c for c in COUNT_COLUMNS if c in tidy.columns]]
    return tidy.sort_values(["arm", "n_images", "repeat", "dataset", "image"], ignore_index=True)
