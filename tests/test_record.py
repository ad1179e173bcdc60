"""The report's lab record (analysis/record.py): every setting with its source and never an empty value, the
machine and code facts, and the degenerate runs in words."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import record
from segft import machine, schema
from segft.config import StudyConfig
from segft.presets import PRESETS, preset_train_config
from segft.tracking.log import flatten_config


def parent_params(preset: str = "quick", **given) -> dict[str, str]:
    """What a study's parent run logs: its resolved settings, the machine and code facts, the data digest."""
    config = StudyConfig(train=preset_train_config(preset, given), preset=preset)
    return {**{k: str(v) for k, v in flatten_config(config).items()}, **machine.run_params(),
            schema.DATA_DIGEST_PARAM: "0123456789abcdef"}


def test_every_setting_has_a_value_and_says_where_it_came_from():
    table = record.settings_table(parent_params(epochs=2))
    assert (table["value"].str.len() > 0).all() and (table["from"].str.len() > 0).all()
    source = table.set_index("setting")["from"]
    assert source["epochs"] == "given"  # 2, not the preset's 5
    assert source["batch_size"] == source["normalization"] == source["bce_in_every_branch"] == "preset quick"
    assert source["patch_size"] == source["encoder"] == "default"
    assert source["preset"] == "given"  # quick, not the default protocol
    assert table.set_index("setting")["value"]["data_dir"] == "(the built-in synthetic data)"
    assert "report_dir" not in set(table["setting"])
    assert set(PRESETS["quick"]) <= set(table["setting"])


def test_a_setting_missing_from_an_old_run_is_shown_as_not_recorded():
    params = parent_params()
    del params["lr"]
    row = record.settings_table(params).set_index("setting").loc["lr"]
    assert (row["value"], row["from"]) == (record.NOT_RECORDED, "–")


def test_the_record_names_the_machine_the_code_and_the_wall_time():
    params = parent_params()
    table = record.record_table(params, 1_700_000_000_000, 1_700_000_400_000).set_index("item")["value"]
    assert table["wall time"] == "6 min 40 s" and table["started"] == "2023-11-14 22:13:20 UTC"
    assert table["CPU"].startswith(machine.this_machine().cpu_model)
    assert table["torch"] == params[schema.TORCH_VERSION_PARAM]
    assert table["CPU cores / PyTorch threads"] == f"{params[schema.CPU_CORES_PARAM]} / {params['threads']}"
    assert table["segft version"] == params[schema.CODE_VERSION_PARAM]
    assert table["GPU"] == params[schema.GPU_PARAM]
    assert (table.str.len() > 0).all()
    assert record.record_table(params, 1_700_000_000_000, None).set_index("item")["value"]["wall time"] == (
        "(still running)")


@pytest.mark.parametrize("arm, dataset, ratio, reason, expected", [
    ("finetune", "dataset1", 0.2, "finds only 0.20x", "under-segments: misses most objects: Dataset 1 forgotten"),
    ("finetune", "dataset2", 52.8, "marks 52.8x", "over-segments: calls background foreground"),
    ("raw", "dataset2", 8.0, "marks 8.0x", "the raw model: the domain shift itself"),
    ("scratch", "dataset2", 1.0, "gives exactly the same masks as", "same masks as another size"),
])
def test_a_flag_is_said_in_a_few_words(arm, dataset, ratio, reason, expected):
    flags = pd.DataFrame([{"run_id": "r", "arm": arm, "n_images": 5, "repeat": 1, "dataset": dataset,
                           "fg_ratio": ratio, "reason": reason}])
    row = record.degenerate_table(flags).iloc[0]
    assert expected in row["what it means"]
    assert row["run"] == ("raw model, repeat 1" if arm == "raw" else f"{arm} n=5, repeat 1")
