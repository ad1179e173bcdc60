"""A refused command line is one line too, names the flag and points to --help; under ``mlflow run`` it leaves no
FAILED run behind (issue 22)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_ENTRY_POINT

from segft import cli, schema
from segft.config import StudyConfig

ROOT = Path(__file__).resolve().parents[1]

#: (command line, what the line must name, the help it points to)
ARGUMENT_ERRORS = [
    (["base", "--nonsense", "1"], "--nonsense 1", "segft base --help"),
    (["base", "--lr", "x"], "--lr", "segft base --help"),
    (["base", "--batch_size", "8"], "--batch_size", "segft base --help"),  # study's spelling only
    (["finetune", "--epochs"], "--epochs", "segft finetune --help"),
    (["study", "--sizes", "a,b"], "--sizes", "segft study --help"),
    (["predict", "--overlays", "maybe"], "--overlays", "segft predict --help"),
    (["prune", "--dry-run", "perhaps"], "--dry-run", "segft prune --help"),
    (["tune", "--n-trials", "1.5", "--nonsense"], "--n-trials", "segft tune --help"),
    ([], "command", "segft --help"),
    (["trian"], "trian", "segft --help"),
    (["data"], "data_command", "segft data --help"),
]


@pytest.mark.parametrize("argv, culprit, help_command", ARGUMENT_ERRORS, ids=lambda v: str(v))
def test_a_refused_command_line_is_one_line_naming_the_flag(argv, culprit, help_command, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert cli.main(argv) == 2
    printed = capsys.readouterr()
    (line,) = printed.err.strip().splitlines()
    assert line.startswith("segft: error: ") and culprit in line and f"see '{help_command}'" in line, line
    assert printed.out == "" and "usage:" not in printed.err


def test_help_still_prints_the_usage_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["prune", "--help"])
    assert done.value.code == 0 and "--dry-run" in capsys.readouterr().out


@pytest.mark.parametrize("sizes", [(2, 2), (5, 10, 5)])
def test_repeated_sizes_are_refused_in_one_line(sizes, capsys):
    with pytest.raises(ValueError, match="sizes must differ"):
        StudyConfig(sizes=sizes)
    assert cli.main(["study", "--sizes", ",".join(map(str, sizes)), "--data-dir", "/nonexistent"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"segft: error: sizes must differ from each other, got {','.join(map(str, sizes))}"


@pytest.fixture
def project_run(tmp_path, monkeypatch):
    """A run as ``mlflow run`` hands one over (its entry-point tag and -P values, RUNNING), in a fresh store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("segft", artifact_location=str(tmp_path / "mlruns"))

    def start(tags: dict[str, str]) -> str:
        run = client.create_run(experiment_id, tags=tags)
        client.log_param(run.info.run_id, "nonsense", "1")
        monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
        return run.info.run_id

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return client, start


def test_under_mlflow_run_a_refused_command_line_deletes_the_run_opened_for_it(project_run, capsys):
    client, start = project_run
    run_id = start({MLFLOW_PROJECT_ENTRY_POINT: "base"})
    assert cli.main(["base", "--nonsense", "1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    run = client.get_run(run_id)
    assert run.info.lifecycle_stage == "deleted" and run.info.status == "FAILED"
    assert run.data.tags[schema.ERROR_TAG] == line
    assert client.search_runs([run.info.experiment_id]) == []  # nothing left in the experiment's list


@pytest.mark.parametrize("tags, metric", [({}, False), ({MLFLOW_PROJECT_ENTRY_POINT: "base"}, True),
                                          ({MLFLOW_PROJECT_ENTRY_POINT: "base", schema.ROLE_TAG: "base"}, False)],
                         ids=["set-by-hand", "with-metrics", "segft-run"])
def test_a_run_that_holds_anything_else_is_left_alone(project_run, tags, metric):
    client, start = project_run
    run_id = start(tags)
    if metric:
        client.log_metric(run_id, "x", 1.0)
    assert cli.main(["base", "--nonsense", "1"]) == 2
    run = client.get_run(run_id)
    assert run.info.lifecycle_stage == "active" and run.info.status == "RUNNING"


def test_the_readme_counts_the_bad_input_cases_the_table_holds():
    """The README quotes the size of tests/test_bad_inputs.py's table; counted from the file, not imported (it loads
    torch and builds a store)."""
    tree = ast.parse((ROOT / "tests" / "test_bad_inputs.py").read_text())
    (table,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "CASES" for t in node.targets)]
    quoted = re.search(r"`tests/test_bad_inputs.py` holds (\d+) such cases", (ROOT / "README.md").read_text())
    assert quoted, "the README no longer says how many bad-input cases there are"
    assert int(quoted.group(1)) == len(table.keys)
