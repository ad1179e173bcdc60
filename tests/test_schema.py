"""The shape of the house: one schema of names, tracking as a leaf, analysis without torch (issue 12)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from segft import schema

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("segft/**/*.py"), *ROOT.glob("analysis/**/*.py")])
#: Modules that may talk to MLflow through segft.tracking: the run pipeline (segft.executor starts runs in Ray
#: workers and ends the runs of dead tasks) and the commands.
TRACKING_USERS = {"segft.runs", "segft.study", "segft.tuning", "segft.executor", "segft.predict", "segft.cli"}


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


def test_only_the_run_pipeline_and_the_commands_import_tracking():
    importers = {module_name(p) for p in SOURCES if "segft.tracking" in imported_modules(p)}
    assert importers <= TRACKING_USERS, importers - TRACKING_USERS


def test_tracking_is_a_leaf():
    segft_imports = {m for m in imported_modules(ROOT / "segft" / "tracking.py") if m.startswith("segft")}
    assert segft_imports <= {"segft", "segft.schema", "segft.config", "segft.urls", "segft.urls.redact"}, segft_imports


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


def names_in_schema() -> list[str]:
    """Tag values and artifact path roots: the strings only ``segft/schema.py`` may spell out."""
    tags = [value for name, value in vars(schema).items() if name.endswith("_TAG")]
    artifacts = [schema.EVALUATION_CSV, schema.VALIDATION_CSV, schema.SPLIT_JSON, schema.TEST_DATA_DIR,
                 schema.overlay_path("d", "i").split("/")[0] + "/", schema.prediction_path("d", "i").split("/")[0] + "/"]
    return tags + artifacts


def string_literals(path: Path) -> list[str]:
    """Every string constant of a file, f-string parts included, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


@pytest.mark.parametrize("name", names_in_schema())
def test_tag_and_artifact_names_are_spelled_only_in_the_schema(name):
    spelled = [module_name(p) for p in SOURCES if p.name != "schema.py"
               and any(literal == name or literal.startswith(name) for literal in string_literals(p))]
    assert spelled == [], f"{name!r} spelled out in {spelled}: use segft.schema"
