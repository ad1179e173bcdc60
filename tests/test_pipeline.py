"""``segft.runs.open_run``: every run opens the same way (issue 21: one pipeline). Fast: a real SQLite store, no
training."""

from __future__ import annotations

import json

import pytest

from segft import machine, schema, tracking
from segft.config import TrainConfig
from segft.runs import mix_with_start, open_run


def test_a_run_opens_with_its_tags_params_machine_digest_split_and_inputs(store):
    inputs = [tracking.DatasetInput(schema.input_name(schema.DATASET2, "test"), schema.TEST_CONTEXT, "here",
                                    "0123456789abcdef", 3)]
    with open_run("a-run", {schema.ROLE_TAG: schema.THRESHOLD_ARM}, {schema.N_IMAGES_PARAM: 0}, "digest1",
                  inputs, {"train": ["a.png", "b.png"]}) as run_id:
        pass
    logged = store.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "a-run"
    assert logged.data.tags[schema.ROLE_TAG] == schema.THRESHOLD_ARM
    assert logged.data.tags[schema.DIGEST_TAG] == "digest1"
    params = logged.data.params
    assert params[schema.DATA_DIGEST_PARAM] == "digest1" and params[schema.N_IMAGES_PARAM] == "0"
    assert params[schema.SPLIT_PARAM_PREFIX + "train"] == "a.png,b.png"
    assert {name: params[name] for name in machine.run_params()} == {
        name: str(value) for name, value in machine.run_params().items()}
    split_file = store.download_artifacts(run_id, schema.SPLIT_JSON)
    assert json.loads(open(split_file).read()) == {"train": ["a.png", "b.png"]}
    assert [i.dataset.name for i in logged.inputs.dataset_inputs] == [inputs[0].name]


def test_a_run_that_raises_inside_ends_failed_with_the_reason(store):
    with pytest.raises(RuntimeError, match="boom"):
        with open_run("failing", {}, {}, "digest1") as run_id:
            raise RuntimeError("boom")
    logged = store.get_run(run_id)
    assert logged.info.status == "FAILED" and "boom" in logged.data.tags[schema.ERROR_TAG]
    assert schema.SPLIT_PARAM_PREFIX + "train" not in logged.data.params  # no split given, none logged


def test_only_a_run_from_a_base_model_mixes_its_weights():
    config = TrainConfig(finetune_mix=0.7)
    assert mix_with_start(config, from_base=True) == 0.7
    assert mix_with_start(config, from_base=False) == 1.0
