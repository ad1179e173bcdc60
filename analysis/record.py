"""A study's lab record, as its report shows it: when and where it ran, with which code, every setting it used
(and where each came from), and its degenerate runs in a table a person can read.

Everything here is read from the study's parent run: its params (the resolved settings, ``segft.machine``'s
machine and code facts, the data digest) and its start and end times. Plain data in, pandas tables out.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import datetime, timezone

import pandas as pd

from segft import quality, schema
from segft.config import (ExecutorConfig, LossConfig, ModelConfig, RegistryConfig, SplitConfig, StudyConfig,
                          TrackingConfig, TrainConfig)
from segft.presets import PRESETS, preset_train_config
from segft.tracking.log import flatten_config

#: How the settings table groups the parent's params: (group, the config dataclass whose own fields it holds).
SETTING_GROUPS = (("study", StudyConfig), ("training", TrainConfig), ("model", ModelConfig), ("loss", LossConfig),
                  ("split", SplitConfig), ("execution", ExecutorConfig), ("tracking", TrackingConfig),
                  ("registry", RegistryConfig))
#: What an empty value means, where it means something other than "none".
EMPTY_MEANS = {"data_dir": "(the built-in synthetic data)", "encoder_weights": "(none: random initialization)"}
NOT_RECORDED = "(not recorded)"
#: Report settings that say where the report goes, not what the study computed.
LEFT_OUT = ("report_dir",)


def _own_fields(cls: type) -> list[str]:
    """The fields of ``cls`` that are settings themselves, not nested configs."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]


def shown(name: str, value: str | None) -> str:
    """A param's value as the record shows it: never empty."""
    if value is None:
        return NOT_RECORDED
    return value if value != "" else EMPTY_MEANS.get(name, "(none)")


def settings_table(params: dict[str, str]) -> pd.DataFrame:
    """Every setting the study ran with, one row each: ``group, setting, value, from``.

    ``from`` says where the value came from: ``preset <name>`` (the study's preset set it), ``default`` (the
    dataclass default) or ``given`` (set explicitly, on the command line or with ``-P``). Params not in a config
    (``study_id``...) are left to the record table.
    """
    preset = params.get("preset", "protocol")
    if preset in PRESETS:
        expected = flatten_config(StudyConfig(train=preset_train_config(preset), preset=preset))
    else:
        expected = flatten_config(StudyConfig())
    expected["preset"] = StudyConfig.preset
    preset_set = PRESETS.get(preset, {})
    rows = []
    for group, cls in SETTING_GROUPS:
        for name in _own_fields(cls):
            if name in LEFT_OUT:
                continue
            value = params.get(name)
            if value is None:
                source = ""
            elif str(expected.get(name)) != value:
                source = "given"
            else:
                source = f"preset {preset}" if name in preset_set else "default"
            rows.append({"group": group, "setting": name, "value": shown(name, value), "from": source or "–"})
    return pd.DataFrame(rows, columns=["group", "setting", "value", "from"])


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "–"


def _duration(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours} h {minute:02d} min" if hours else f"{minute} min {second:02d} s"


def record_table(params: dict[str, str], start_ms: int | None, end_ms: int | None) -> pd.DataFrame:
    """When, where and with what the study ran, one row per fact: ``item, value``.

    Args:
        params: The parent run's params.
        start_ms, end_ms: The parent run's start and end (ms since the epoch; end None while it runs). A resumed
            study's parent spans every start, so the wall time includes the pauses between them.
    """
    get = params.get
    cpu = get(schema.CPU_MODEL_PARAM)
    if cpu is not None and get(schema.CPU_FAMILY_PARAM):
        cpu += f" (family {get(schema.CPU_FAMILY_PARAM)}, model {get(schema.CPU_MODEL_NUMBER_PARAM)})"
    wall = _duration((end_ms - start_ms) / 1000) if start_ms and end_ms else "(still running)"
    commit = get(schema.GIT_COMMIT_PARAM)
    rows = [
        ("preset", get("preset")),
        ("started", _time(start_ms)),
        ("ended", _time(end_ms) if end_ms else "(still running)"),
        ("wall time", wall),
        ("segft version", get(schema.CODE_VERSION_PARAM)),
        ("git commit", None if commit is None else commit or "(not run from a git checkout)"),
        ("CPU", cpu),
        ("vector instructions (torch kernels)", None if get(schema.CPU_ISA_PARAM) is None else
         f"{get(schema.CPU_ISA_PARAM) or 'none listed'} ({get(schema.TORCH_CPU_CAPABILITY_PARAM)})"),
        ("CPU cores / PyTorch threads", f"{shown('', get(schema.CPU_CORES_PARAM))} / "
                                        f"{shown('', get(schema.THREADS_PARAM))}"),
        ("GPU", get(schema.GPU_PARAM)),
        ("torch", get(schema.TORCH_VERSION_PARAM)),
        ("data", shown("data_dir", get("data_dir"))),
        ("data digest", get(schema.DATA_DIGEST_PARAM)),
    ]
    return pd.DataFrame([(item, shown(item, value)) for item, value in rows], columns=["item", "value"])


def degenerate_table(degenerate: pd.DataFrame) -> pd.DataFrame:
    """``analysis.summary.degenerate_runs`` as a person reads it: ``run, dataset, fg ratio, what it means`` (the
    full sentences stay in ``degenerate_runs.csv``)."""
    columns = ["run", "dataset", "fg ratio", "what it means"]
    rows = []
    for row in degenerate.itertuples(index=False):
        run = "raw model" if row.arm == schema.RAW_ARM else f"{row.arm} n={row.n_images}"
        rows.append((f"{run}, repeat {row.repeat}", row.dataset, round(float(row.fg_ratio), 2),
                     meaning(row.arm, row.dataset, float(row.fg_ratio), "same masks" in row.reason)))
    return pd.DataFrame(rows, columns=columns)


def meaning(arm: str, dataset: str, ratio: float, same_masks: bool) -> str:
    """What a flag means for this run, in a few words (``segft.quality``'s rule)."""
    parts = []
    if ratio > quality.DEGENERATE_RATIO:
        parts.append("over-segments: calls background foreground")
    elif ratio < 1 / quality.DEGENERATE_RATIO:
        parts.append("under-segments: misses most objects")
    if same_masks:
        parts.append("same masks as another size: more images changed nothing")
    text = "; ".join(parts)
    if arm == schema.RAW_ARM:
        return f"{text} (the raw model: the domain shift itself)"
    if arm == schema.FINETUNE_ARM and dataset == schema.DATASET1 and ratio < 1 / quality.DEGENERATE_RATIO:
        return f"{text}: Dataset 1 forgotten after training on Dataset 2 only"
    return text
