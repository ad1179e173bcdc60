"""The shape of the house: one schema of names, tracking as a leaf, analysis without torch (issue 12)."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segft import schema

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("segft/**/*.py"), *ROOT.glob("analysis/**/*.py")])
#: Modules that may talk to MLflow through segft.tracking: the run pipeline (segft.executor starts runs in Ray
#: workers and ends the runs of dead tasks), the commands, the report (it logs its folder on the study's parent
#: run through the adapter) and the study query (it follows MLflow's pages as the adapter does).
TRACKING_USERS = {"segft.runs", "segft.study", "segft.tuning", "segft.executor", "segft.predict", "segft.cli",
                  "analysis.report", "analysis.record", "analysis.query"}
#: The modules of the adapter, ``segft/tracking/``.
TRACKING = sorted((ROOT / "segft" / "tracking").glob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (``from a import b`` counts ``a`` and ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def is_tracking(module: str) -> bool:
    return module == "segft.tracking" or module.startswith("segft.tracking.")


def test_only_the_run_pipeline_the_commands_and_the_report_import_tracking():
    importers = {module_name(p) for p in SOURCES
                 if p not in TRACKING and any(is_tracking(m) for m in imported_modules(p))}
    assert importers <= TRACKING_USERS, importers - TRACKING_USERS


@pytest.mark.parametrize("path", TRACKING, ids=lambda path: path.stem)
def test_tracking_is_a_leaf(path):
    """Each module of the adapter imports of segft only the names, the settings, ``redact`` and its own modules,
    and no torch: it knows no training or model code, and ``segft analyze`` imports it."""
    imported = imported_modules(path)
    segft_imports = {m for m in imported if m.split(".")[0] == "segft" and not is_tracking(m)}
    assert segft_imports <= {"segft", "segft.schema", "segft.config", "segft.urls", "segft.urls.redact"}, segft_imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "segmentation_models_pytorch", "timm")}


#: A private MLflow name used through its module path (``mlflow.tracking.fluent._get_experiment_id()``): not
#: MLflow's API, so it may change or vanish in any release.
PRIVATE_MLFLOW_ATTRIBUTE = re.compile(r"\bmlflow(?:\.\w+)*\._[A-Za-z]")


def private_mlflow_names(path: Path) -> list[str]:
    """The private MLflow names a file uses: ``mlflow....._x`` anywhere in its text, a private module or name
    imported from MLflow (``import mlflow._x``, ``from mlflow.x._y import z``, ``from mlflow.x import _z``)."""
    found = [match.group(0) for match in PRIVATE_MLFLOW_ATTRIBUTE.finditer(path.read_text())]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            found += [f"{node.module}.{a.name}" for a in node.names
                      if any(part.startswith("_") for part in [*node.module.split("."), a.name])]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.split(".")[0] == "mlflow" and any(part.startswith("_") for part in a.name.split("."))]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_segft_and_analysis_use_only_mlflow_public_api(path):
    assert private_mlflow_names(path) == []


@pytest.mark.parametrize("code, private", [
    ("x = mlflow.tracking.fluent._get_experiment_id()", True),
    ("mlflow._private", True),
    ("from mlflow.tracking.fluent import _get_experiment_id", True),
    ("from mlflow.tracking._tracking_service import utils", True),
    ("import mlflow.store._unity_catalog", True),
    ("x = mlflow.set_experiment(name).experiment_id", False),
    ("from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID", False),
    ("import mlflow.pyfunc", False),
])
def test_the_private_mlflow_check_finds_private_names(tmp_path, code, private):
    (tmp_path / "example.py").write_text(code + "\n")
    assert bool(private_mlflow_names(tmp_path / "example.py")) == private


def test_urls_is_a_leaf():
    assert not {m for m in imported_modules(ROOT / "segft" / "urls.py") if m.startswith("segft")}


def test_schema_imports_nothing():
    assert imported_modules(ROOT / "segft" / "schema.py") <= {"__future__", "__future__.annotations"}


def test_analysis_never_imports_torch():
    """A user reads a remote study on a laptop without torch (`segft analyze`): importing the whole analysis and the
    command line must not load it."""
    code = ("import sys, segft.cli, analysis.report, analysis.query, analysis.summary, analysis.figures, analysis.grid; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'segmentation_models_pytorch', "
            "'timm', 'torchvision')))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"


#: Param names that are also columns of the analysis's tidy tables (pandas code reads them as column names).
TABLE_COLUMNS = {schema.N_IMAGES_PARAM, schema.REPEAT_PARAM, schema.ARM_PARAM}


def settings_fields() -> set[str]:
    """The settings' own field names: logged as params of the same name (``tracking.flatten_config``), spelled by
    the dataclasses (``threads`` is one)."""
    from segft.config import FinetuneConfig, PredictConfig, StudyConfig, TuneConfig

    def leaves(config: type) -> set[str]:
        found = set()
        for field in dataclasses.fields(config):
            kind = field.default_factory if field.default_factory is not dataclasses.MISSING else None
            found |= leaves(kind) if kind is not None and dataclasses.is_dataclass(kind) else {field.name}
        return found

    return set().union(*(leaves(c) for c in (FinetuneConfig, PredictConfig, StudyConfig, TuneConfig)))


def names_in_schema() -> list[str]:
    """Tag values, param and metric names and artifact path roots: the strings only ``segft/schema.py`` may spell
    out."""
    tags = [value for name, value in vars(schema).items() if name.endswith("_TAG")]
    params = [value for name, value in vars(schema).items()
              if name.endswith(("_PARAM", "_PARAM_PREFIX")) and value not in TABLE_COLUMNS | settings_fields()]
    metrics = [value for name, value in vars(schema).items() if name.endswith("_METRIC")]
    patterns = [schema.threshold_polarity_param(""), schema.loss_branch_metric(""), schema.TUNING_PLOTS_DIR + "/"]
    artifacts = [schema.EVALUATION_CSV, schema.VALIDATION_CSV, schema.SPLIT_JSON, schema.TEST_DATA_DIR,
                 schema.overlay_path("d", "i").split("/")[0] + "/", schema.prediction_path("d", "i").split("/")[0] + "/"]
    return tags + params + metrics + patterns + artifacts


def test_the_schema_names_params_and_metrics():
    """Every param and metric segft writes besides the settings' own fields is named in the schema (the extended
    test below then finds them nowhere else)."""
    names = set(names_in_schema())
    assert {"data_digest", "base_model_uri", "train_loss", "val_dice", "best_lr", "loss_branch_", "tuning/"} <= names


def test_the_settings_arms_are_the_schema_arms():
    from segft.config import StudyConfig

    assert set(StudyConfig().arms) <= set(schema.ARMS)
    with pytest.raises(ValueError, match="unknown arms"):
        StudyConfig(arms=("replay",))


def string_literals(path: Path) -> list[str]:
    """Every string constant of a file, f-string parts included, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("name", names_in_schema())
def test_tag_param_metric_and_artifact_names_are_spelled_only_in_the_schema(name):
    spelled = [module_name(p) for p in SOURCES if p.name != "schema.py"
               and any(literal == name or literal.startswith(name) for literal in string_literals(p))]
    assert spelled == [], f"{name!r} spelled out in {spelled}: use segft.schema"
