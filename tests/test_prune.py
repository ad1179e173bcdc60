"""``segft prune``: the logged models no alias, champion or unfinished study needs are deleted, with a dry run that
lists them; runs, metrics and the report stay (issue 22)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from segft import cli, schema
from segft.config import ReportConfig
from segft.tracking.prune import prune_models

#: Bytes of every fake model's one artifact file.
MODEL_BYTES = 5000


def _log_model(client: MlflowClient, run_id: str, folder: Path, registered: str | None = "segft-finetuned") -> dict:
    """A logged model of ``MODEL_BYTES`` on run ``run_id``, registered as a version of ``registered`` (unless None)."""
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=run.info.run_name, source_run_id=run_id)
    files = folder / model.model_id
    files.mkdir(parents=True)
    (files / "weights.bin").write_bytes(b"w" * MODEL_BYTES)
    client.log_model_artifacts(model.model_id, str(files))
    client.finalize_logged_model(model.model_id, "READY")
    uri = ""
    if registered:
        version = mlflow.register_model(f"models:/{model.model_id}", registered).version
        uri = f"models:/{registered}/{version}"
    return {"model_id": model.model_id, "uri": uri, "run_id": run_id,
            "artifacts": Path(client.get_logged_model(model.model_id).artifact_location.removeprefix("file://"))}


def _run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str], status: str = "FINISHED",
         params: dict[str, str] | None = None) -> str:
    run = client.create_run(experiment_id, tags=tags, run_name=name)
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def store_with_models(fake_study_store, tmp_path):
    """The fake study with a model on every child run, plus the runs each keep rule is about.

    Returns ``(models, expected)``: every model by label, and the reason each kept one is kept (a part of it);
    models missing from ``expected`` are the ones to delete.
    """
    uri = fake_study_store.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    parent = client.get_run(fake_study_store.parent_run_id)
    experiment = parent.info.experiment_id
    folder = tmp_path / "models"
    models = {}
    for run in client.search_runs([experiment], f"tags.`{schema.STUDY_TAG}` = '{fake_study_store.study_id}'"):
        if run.data.tags.get(schema.ROLE_TAG) == schema.ROLE_STUDY:
            continue
        label = run.info.run_name + ("-failed" if run.info.status == "FAILED" else "")
        registered = "segft-base" if run.data.tags[schema.ROLE_TAG] == schema.ROLE_BASE else "segft-finetuned"
        models[label] = _log_model(client, run.info.run_id, folder, registered)
    client.set_registered_model_alias("segft-base", schema.BASE_ALIAS, models["base"]["uri"].rsplit("/", 1)[1])
    client.set_registered_model_alias("segft-finetuned", schema.CHAMPION_ALIAS,
                                      models["finetune-n4-r1"]["uri"].rsplit("/", 1)[1])
    client.set_tag(parent.info.run_id, schema.CHAMPION_TAG, models["finetune-n4-r1"]["uri"])
    # an older, finished study: its champion and the base model it started from are no longer aliased
    older = _run(client, experiment, "study-older", {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: "older"})
    for name in ("older-base", "older-other-base"):
        models[name] = _log_model(client, _run(client, experiment, name, {schema.ROLE_TAG: schema.ROLE_BASE,
                                                                            schema.STUDY_TAG: "older"}), folder)
    for name, base in (("older-champion", "older-base"), ("older-other", "older-other-base")):
        run_id = _run(client, experiment, name, {schema.ROLE_TAG: schema.ROLE_FINETUNE, schema.STUDY_TAG: "older"},
                      params={schema.BASE_MODEL_URI_PARAM: models[base]["uri"]})
        models[name] = _log_model(client, run_id, folder)
        client.set_tag(run_id, schema.MODEL_URI_TAG, models[name]["uri"])
    client.set_tag(older, schema.CHAMPION_TAG, models["older-champion"]["uri"])
    # a study stopped by Ctrl-C: a resume needs its models and the base model its runs start from
    _run(client, experiment, "study-killed", {schema.ROLE_TAG: schema.ROLE_STUDY, schema.STUDY_TAG: "killed"},
         status="KILLED")
    models["killed-base"] = _log_model(client, _run(client, experiment, "killed-base",
                                                    {schema.ROLE_TAG: schema.ROLE_BASE, schema.STUDY_TAG: "killed"}),
                                       folder, "segft-base")
    models["killed-finetune"] = _log_model(client, _run(
        client, experiment, "killed-finetune", {schema.ROLE_TAG: schema.ROLE_FINETUNE, schema.STUDY_TAG: "killed"},
        params={schema.BASE_MODEL_URI_PARAM: models["killed-base"]["uri"]}), folder)
    # a fine-tuning still running (its model logged, not yet registered), from a model named by its id
    running = _run(client, experiment, "running", {schema.ROLE_TAG: schema.ROLE_FINETUNE}, status="RUNNING",
                   params={schema.BASE_MODEL_URI_PARAM: f"models:/{models['scratch-n2-r0']['model_id']}"})
    models["running"] = _log_model(client, running, folder, registered=None)
    # a tuning study (it can always be continued) and the base model it fine-tunes, named by alias-free version
    _run(client, experiment, "tune-x", {schema.ROLE_TAG: schema.ROLE_TUNE, schema.TUNING_STUDY_TAG: "x"},
         params={schema.BASE_MODEL_URI_PARAM: models["finetune-n2-r1"]["uri"]})
    # models no rule keeps: an unregistered one; and one that is not segft's (never touched)
    models["unregistered"] = _log_model(client, _run(client, experiment, "unregistered",
                                                     {schema.ROLE_TAG: schema.ROLE_FINETUNE}), folder, None)
    models["foreign"] = _log_model(client, _run(client, experiment, "foreign", {}), folder, "someone-else")
    # another experiment's segft model
    other = client.create_experiment("elsewhere", artifact_location=(tmp_path / "elsewhere").as_uri())
    models["elsewhere"] = _log_model(client, _run(client, other, "elsewhere", {schema.ROLE_TAG: schema.ROLE_BASE}),
                                     folder, "segft-base")
    expected = {"base": "alias base", "finetune-n4-r1": "alias champion", "older-champion": "champion of study older",
                "older-base": "base model of the champion of study older",
                "killed-base": "study killed",  # its own study, and the base of a run in it
                "killed-finetune": "study killed has not finished (KILLED)",
                "running": "run running is RUNNING", "scratch-n2-r0": "base model of RUNNING run running",
                "finetune-n2-r1": "base model of tuning study x"}
    yield client, client.get_experiment(experiment).name, models, expected
    mlflow.set_tracking_uri(None)


def _by_label(models: dict, spaces) -> dict[str, str]:
    label = {model["model_id"]: name for name, model in models.items()}
    return {label[space.model_id]: space.kept_because for space in spaces}


def test_a_dry_run_lists_what_nothing_needs_and_deletes_nothing(store_with_models):
    client, experiment, models, expected = store_with_models
    result = prune_models(experiment, dry_run=True)
    to_delete = set(models) - set(expected) - {"foreign", "elsewhere"}
    assert set(_by_label(models, result.deleted)) == to_delete
    kept = _by_label(models, result.kept)
    assert set(kept) == set(expected)
    for name, why in expected.items():
        assert why in kept[name], (name, kept[name])
    assert result.freed == MODEL_BYTES * len(to_delete)
    assert all(model["artifacts"].is_dir() for model in models.values())
    assert all(client.get_model_version(*m["uri"][len("models:/"):].split("/")) for m in models.values() if m["uri"])


def test_prune_deletes_versions_artifacts_and_logged_models_and_keeps_runs_and_the_report(
        store_with_models, fake_study_store, tmp_path):
    from analysis.report import build_report

    client, experiment, models, expected = store_with_models
    runs_before = {run.info.run_id: run.data.metrics for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    result = prune_models(experiment)
    deleted = set(_by_label(models, result.deleted))
    assert deleted == set(models) - set(expected) - {"foreign", "elsewhere"}
    for name, model in models.items():
        assert model["artifacts"].is_dir() == (name not in deleted), name
        if model["uri"]:
            registered, version = model["uri"][len("models:/"):].split("/")
            found = [str(v.version) for v in client.search_model_versions(f"name = '{registered}'")]
            assert (version in found) == (name not in deleted), name
    remaining = {m.model_id for m in client.search_logged_models(
        [e.experiment_id for e in client.search_experiments()])}
    assert remaining == {model["model_id"] for name, model in models.items() if name not in deleted}
    runs_after = {run.info.run_id: run.data.metrics for run in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert runs_after == runs_before  # every run and metric stays
    report = build_report(ReportConfig(tracking_uri=fake_study_store.tracking_uri, study_id=fake_study_store.study_id,
                                       report_dir=str(tmp_path / "report")))
    assert report.champion.model_uri == models["finetune-n4-r1"]["uri"]
    again = prune_models(experiment)  # nothing left to delete; what is kept stays kept
    assert again.deleted == () and set(_by_label(models, again.kept)) == set(expected)


def test_without_an_experiment_every_experiment_is_pruned(store_with_models):
    _, _, models, expected = store_with_models
    deleted = set(_by_label(models, prune_models("", dry_run=True).deleted))
    assert deleted == set(models) - set(expected) - {"foreign"}


def test_the_prune_command_lists_and_totals(store_with_models, capsys, monkeypatch):
    _, experiment, models, expected = store_with_models
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    assert cli.main(["prune", "--experiment", experiment, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n_deleted = len(set(models) - set(expected) - {"foreign", "elsewhere"})
    assert sum(line.startswith("would delete ") for line in lines) == n_deleted + 1
    assert sum(line.startswith("kept ") for line in lines) == len(expected)
    assert lines[-1] == (f"would delete {n_deleted} logged model(s), {n_deleted * MODEL_BYTES / 1e6:.1f} MB; kept "
                         f"{len(expected)}; a dry run: nothing was deleted")
    assert cli.main(["prune", "--experiment", "no-such-experiment"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("segft: error: experiment 'no-such-experiment' does not exist")
