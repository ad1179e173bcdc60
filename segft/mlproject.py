"""``MLproject`` written from the config dataclasses, so entry-point parameters, CLI flags and defaults have one
source (``segft mlproject`` rewrites the file; ``tests/test_config.py`` checks that the committed one is current).

Every leaf field of an entry point's config becomes a parameter of the same name with the dataclass default and
is passed to the flag of the same name. The ``study`` entry point does not declare the training parameters, so that
they come from its preset unless given: ``mlflow run`` passes an undeclared ``-P lr=1e-4`` on as ``--lr 1e-4`` and
logs it, and segft logs the value of every other one it used (a declared empty default would be logged as ``''``,
and MLflow refuses to change a logged parameter).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from segft.config import (BaseConfig, FinetuneConfig, PredictConfig, PruneConfig, ReportConfig, StudyConfig,
                          TrainConfig, TuneConfig)

#: entry point -> (segft command, config class, fields that do not apply, comment)
ENTRY_POINTS: dict[str, tuple[str, type, tuple[str, ...], str]] = {
    "base": ("base", BaseConfig, (), "Trains the base model on Dataset 1 and evaluates it on both test sets."),
    "finetune": ("finetune", FinetuneConfig, (), "Fine-tunes a base model with n_images Dataset 2 images."),
    "study": ("study", StudyConfig, (), "The whole study. Training parameters (epochs, lr, batch_size, ...: every "
              "flag of `segft study`) are not declared: given with -P they override the preset (protocol = the "
              "original study, quick = minutes on a CPU), else the preset's value is used and logged."),
    "analyze": ("analyze", ReportConfig, (), "Reads a study back through the MLflow client; empty tracking_uri = "
                "the one `mlflow run` uses."),
    "tune": ("tune", TuneConfig, ("lr",), "Optuna study of the learning rate on validation images (never test "
             "images); each trial draws its own lr."),
    "predict": ("predict", PredictConfig, (), "Segments an image file, TIFF stack or folder with a registered "
                "model; masks go to `output`."),
    "prune": ("prune", PruneConfig, (), "Deletes the logged models no alias, champion or unfinished study needs "
              "(runs, metrics and reports stay); dry_run=true only lists them and the space they hold."),
}
HEADER = """name: segft

# Written by `segft mlproject` from segft/config.py: do not edit by hand (tests/test_config.py checks it).
# Run with `mlflow run . -e finetune -P n_images=15 --env-manager local` (drop the flag where conda is installed).
conda_env: conda.yaml

entry_points:
"""


def leaf_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """(field, resolved type) of every non-dataclass field of ``cls``, nested dataclasses flattened in order: the
    settings a command exposes as flags and MLproject parameters."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        leaves.extend(leaf_fields(kind) if dataclasses.is_dataclass(kind) else [(item, kind)])
    return leaves


def field_default(item: dataclasses.Field) -> Any:
    """A field's default value (calling its default factory)."""
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def mlproject_default(value: object) -> object:
    """A default as MLproject holds it: tuples comma-separated, booleans as ``True``/``False`` strings."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value) if isinstance(value, bool) else value


def parameters(entry_point: str) -> dict[str, tuple[str, object]]:
    """``{name: (MLproject type, default)}`` of an entry point."""
    _, cls, excluded, _ = ENTRY_POINTS[entry_point]
    from_preset = {f.name for f, _ in leaf_fields(TrainConfig)} if cls is StudyConfig else set()
    return {field.name: ({int: "int", float: "float"}.get(kind, "string"), mlproject_default(field_default(field)))
            for field, kind in leaf_fields(cls) if field.name not in {*excluded, *from_preset}}


def _yaml_scalar(value: object) -> str:
    if isinstance(value, float):
        return repr(value) if "e" not in repr(value) else f"{value:.1e}".replace("e-0", "e-")  # YAML 1.1 needs the dot
    if isinstance(value, int):
        return str(value)
    return '""' if value == "" else f'"{value}"'


def render() -> str:
    """The whole ``MLproject`` file."""
    blocks = [HEADER]
    for name, (command, _, _, comment) in ENTRY_POINTS.items():
        params = parameters(name)
        lines = [f"  {name}:", f"    # {comment}", "    parameters:"]
        lines += [f"      {p}: {{type: {kind}, default: {_yaml_scalar(default)}}}" for p, (kind, default) in params.items()]
        flags = [f"--{p.replace('_', '-')} {{{p}}}" for p in params]
        words, line, folded = [f"python -m segft {command}", *flags], "", []
        for word in words:
            if line and len(line) + len(word) > 100:
                folded.append(line)
                line = ""
            line = f"{line} {word}".strip()
        folded.append(line)
        lines += ["    command: >-", *[f"      {text}" for text in folded]]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)
