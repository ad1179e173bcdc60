"""Killed and interrupted studies (issue 13): real processes get SIGKILL or SIGTERM mid-epoch, during evaluation and
right after a model is registered; every run still ends in a final state, the resumed study reaches the same Dice
and aliases as an uninterrupted one, and a version whose run did not finish is never used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from segft.data.synthetic import make_microtube_study, write_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STUDY = ["study", "--preset", "quick", "--epochs", "2", "--batch-size", "16", "--patch-size", "64", "--encoder",
         "resnet18", "--encoder-depth", "3", "--decoder-channels", "16,8,4", "--dataset1-train-images", "3",
         "--dataset2-pool-images", "3", "--sizes", "1,2", "--repeats", "1", "--arms", "finetune"]

#: Runs ``segft`` in this process and sends itself ``signal`` at ``point``, the ``nth`` time it is reached (counted
#: over the whole study: base r0, then finetune n1, then finetune n2). The points are hooks around segft's own
#: functions, so the signal arrives exactly where the test says, in a real process.
DRIVER = r"""
import os, signal, sys
import segft.runs, segft.tracking, segft.training
from segft import cli

name, point, nth, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
calls = [0]

def reached():
    calls[0] += 1
    return calls[0] == nth

def fire():
    os.kill(os.getpid(), getattr(signal, name))

train_epoch, evaluate, register_model = segft.training.train_epoch, segft.runs.evaluate, segft.tracking.register_model

def epoch_hook(step, *args, **kwargs):  # the signal arrives after the epoch's first step
    if reached():
        inner = step
        def step(*batch):
            result = inner(*batch)
            fire()
            return result
    return train_epoch(step, *args, **kwargs)

def evaluate_hook(segmenter, image_set):  # the signal arrives after the first image is segmented
    if reached():
        inner = segmenter
        def segmenter(image):
            result = inner(image)
            fire()
            return result
    return evaluate(segmenter, image_set)

def register_hook(*args, **kwargs):  # the signal arrives right after the version is registered
    result = register_model(*args, **kwargs)
    if reached():
        fire()
    return result

hooks = {"mid-epoch": ("segft.training", "train_epoch", epoch_hook), "evaluation": ("segft.runs", "evaluate", evaluate_hook),
         "registration": ("segft.tracking", "register_model", register_hook)}
module, attribute, hook = hooks[point]
setattr(sys.modules[module], attribute, hook)
sys.exit(cli.main(argv))
"""
#: The nth time each point is reached is inside the second trained run (finetune n1): base r0 trains 2 epochs and
#: is evaluated on 2 test sets; finetune n1 then on 2 test sets and its validation images.
NTH = {"mid-epoch": 4, "evaluation": 4, "registration": 2}


def _env(store: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _segft(store: Path, data: Path, driver: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [*STUDY, "--data-dir", str(data), "--report-dir", str(store / "report")]
    prefix = ["-c", DRIVER, driver[0], driver[1], str(NTH[driver[1]])] if driver else ["-c", "import sys; from segft import cli; sys.exit(cli.main(sys.argv[1:]))"]
    return subprocess.run([sys.executable, *prefix, *argv], cwd=store, env=_env(store), capture_output=True,
                          text=True, timeout=600)


def _outcome(store: Path) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Test Dice of every finished trained run by run key, and what each alias points at (as a run key)."""
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    finished = {r.data.tags["segft.run_key"]: r for r in runs
                if r.info.status == "FINISHED" and "segft.run_key" in r.data.tags}
    dice = {key: {k: v for k, v in r.data.metrics.items() if k.startswith("test_dice")} for key, r in finished.items()}
    key_of_run = {r.info.run_id: key for key, r in finished.items()}
    aliases = {}
    for name, alias in (("segft-finetuned", "champion"), ("segft-base", "base")):
        versions = [v for v in client.search_model_versions(f"name = '{name}'") if alias in v.aliases]
        aliases[alias] = key_of_run[versions[0].run_id] if versions else None  # no champion when all are degenerate
    return dice, aliases


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_study(make_microtube_study(n_images=4), tmp_path_factory.mktemp("data") / "study")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    store = tmp_path_factory.mktemp("uninterrupted")
    completed = _segft(store, data)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return _outcome(store)


@pytest.mark.parametrize("point", list(NTH))
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_an_interrupted_study_resumes_to_the_same_dice_and_aliases(signal_name, point, data, uninterrupted, tmp_path):
    killed = _segft(tmp_path, data, (signal_name, point))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = lambda: client.search_runs([e.experiment_id for e in client.search_experiments()])  # noqa: E731
    if signal_name == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL
        assert [r for r in runs() if r.info.status == "RUNNING"], "a SIGKILL leaves runs RUNNING until the resume"
    else:
        assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-3000:]
        assert killed.stderr.strip().splitlines()[-1] == "segft: interrupted by SIGTERM; its MLflow runs ended KILLED"
        statuses = {r.data.tags.get("segft.run_key", "study"): r.info.status for r in runs()}
        assert statuses == {"base/r0": "FINISHED", "finetune/n1/r0": "KILLED", "study": "KILLED"}

    resumed = _segft(tmp_path, data)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [r for r in runs() if r.info.status == "RUNNING"]
    interrupted_run = next(r for r in runs() if r.data.tags.get("segft.run_key") == "finetune/n1/r0"
                           and r.info.status != "FINISHED")
    assert interrupted_run.info.status == ("FAILED" if signal_name == "SIGKILL" else "KILLED")
    assert interrupted_run.data.tags["segft.error"]
    assert _outcome(tmp_path) == uninterrupted

    versions = client.search_model_versions(f"run_id = '{interrupted_run.info.run_id}'")
    if point == "registration":  # the version registered just before the kill is retired, never aliased
        (version,) = versions
        assert version.tags["segft.unfinished_run"] == interrupted_run.info.status
        assert not version.aliases
    else:
        assert versions == []
