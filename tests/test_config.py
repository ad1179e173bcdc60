"""MLproject parameters, CLI flags and config dataclasses share names and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segft.cli import _leaf_fields, build_parser, config_from_args, study_config_from_args
from segft.mlproject import field_default as _default
from segft.config import (BaseConfig, FinetuneConfig, ModelConfig, PredictConfig, ReportConfig, StudyConfig,
                          TrainConfig, TuneConfig)
from segft.mlproject import render
from segft.presets import PRESETS, preset_train_config

MLPROJECT = Path(__file__).resolve().parents[1] / "MLproject"
ENTRY_POINTS = [("base", BaseConfig), ("finetune", FinetuneConfig), ("study", StudyConfig), ("analyze", ReportConfig),
                ("tune", TuneConfig), ("predict", PredictConfig)]
#: Study parameters that come from the preset when left empty.
FROM_PRESET = {field.name for field, _, _ in _leaf_fields(TrainConfig)}


def dataclass_defaults(cls: type) -> dict[str, object]:
    """Defaults as MLproject writes them (tuples as comma-separated strings)."""
    defaults = {field.name: _default(field) for field, _, _ in _leaf_fields(cls)}
    return {name: ",".join(map(str, v)) if isinstance(v, tuple) else v for name, v in defaults.items()}


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load(MLPROJECT.read_text())


def test_committed_mlproject_is_generated_from_the_dataclasses():
    """Run `segft mlproject` after changing a config field; this fails until then."""
    assert MLPROJECT.read_text() == render(), "MLproject is stale: run `segft mlproject`"


@pytest.mark.parametrize("entry_point, config_class", ENTRY_POINTS)
def test_mlproject_and_dataclass_fields_match_in_both_directions(project, entry_point, config_class):
    """Every parameter is a field with the field's default, and every field is a parameter, except those that
    do not apply (tune draws its own lr) and the study's training parameters, which come from its preset."""
    defaults = dataclass_defaults(config_class)
    parameters = project["entry_points"][entry_point]["parameters"]
    not_declared = {"tune": {"lr"}, "study": FROM_PRESET}.get(entry_point, set())
    assert set(parameters) == set(defaults) - not_declared
    for name, spec in parameters.items():
        expected = str(defaults[name]) if isinstance(defaults[name], bool) else defaults[name]
        assert spec["default"] == expected, f"{entry_point}.{name}: MLproject {spec['default']!r} != {expected!r}"


def test_study_training_flags_take_the_spelling_mlflow_run_passes_undeclared_parameters_in():
    """`mlflow run -e study -P batch_size=8` appends `--batch_size 8`: the same flag as --batch-size."""
    args = build_parser().parse_args(["study", "--preset", "quick", "--batch_size", "8", "--lr", "1e-4"])
    config = study_config_from_args(args)
    assert config.train == preset_train_config("quick", {"batch_size": 8, "lr": 1e-4})
    with pytest.raises(SystemExit):  # the base command declares every parameter: no second spelling there
        build_parser().parse_args(["base", "--batch_size", "8"])


@pytest.mark.parametrize("entry_point, config_class", ENTRY_POINTS)
def test_mlproject_command_passes_every_parameter_to_its_flag(project, entry_point, config_class):
    spec = project["entry_points"][entry_point]
    command = " ".join(spec["command"].split())
    assert command.startswith(f"python -m segft {entry_point} ")  # entry point and command names agree
    for name in spec["parameters"]:
        assert f"--{name.replace('_', '-')} {{{name}}}" in command


#: Model and loss settings, with a value other than any preset's.
MODEL_AND_LOSS = {"arch": "paulow", "loss_scope": "patch", "bce_in_every_branch": "true", "weight_bce": "0.5",
                  "weight_tversky": "0.5", "weight_focal_tversky": "0.5", "small_foreground": "0.1"}


@pytest.mark.parametrize("entry_point", ["base", "finetune", "tune"])
@pytest.mark.parametrize("name", MODEL_AND_LOSS)
def test_model_and_loss_settings_reach_every_training_entry_point(project, entry_point, name):
    assert name in project["entry_points"][entry_point]["parameters"]


@pytest.mark.parametrize("name, value", MODEL_AND_LOSS.items())
def test_model_and_loss_settings_reach_the_study_as_mlflow_run_passes_them(name, value):
    """Undeclared in the study entry point: `-P name=value` arrives as `--name value`."""
    args = build_parser().parse_args(["study", "--preset", "quick", f"--{name}", value])
    from segft.tracking import flatten_config

    assert str(flatten_config(study_config_from_args(args))[name]).lower() == value


@pytest.mark.parametrize("name", ["data_dir", "epochs", "batch_size", "lr", "patch_size", "encoder", "seed"])
@pytest.mark.parametrize("entry_point", ["base", "finetune"])
def test_shared_parameter_names(project, entry_point, name):
    assert name in project["entry_points"][entry_point]["parameters"]


def test_finetune_parameters(project):
    assert {"n_images", "base_model"} <= set(project["entry_points"]["finetune"]["parameters"])


def test_protocol_defaults():
    train = TrainConfig()
    assert (train.epochs, train.batch_size, train.lr, train.patch_size) == (100, 4, 1e-5, 128)
    assert (train.split.dataset1_train_images, train.split.dataset2_pool_images) == (25, 20)
    assert (train.loss.small_foreground, train.loss.tversky_alpha, train.loss.tversky_beta, train.loss.focal_gamma) == (
        0.0625, 0.7, 0.3, 0.75)
    assert ModelConfig().encoder_weights == ""  # nothing is downloaded by default


def test_flags_build_the_config():
    args = build_parser().parse_args(
        ["finetune", "--n-images", "15", "--epochs", "3", "--lr", "0.001", "--decoder-channels", "32,16,8",
         "--encoder-depth", "3", "--tversky-alpha", "0.6"]
    )
    config = config_from_args(FinetuneConfig, args)
    assert config.n_images == 15 and config.train.epochs == 3 and config.train.lr == pytest.approx(1e-3)
    assert config.train.model.decoder_channels == (32, 16, 8) and config.train.model.encoder_depth == 3
    assert config.train.loss.tversky_alpha == 0.6
    assert config_from_args(FinetuneConfig, build_parser().parse_args(["finetune"])) == FinetuneConfig()


def test_bad_flag_value_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["base", "--decoder-channels", "a,b"])
    assert "comma-separated integers" in capsys.readouterr().err


def test_study_flags_override_the_preset():

    args = build_parser().parse_args(["study", "--preset", "quick", "--epochs", "2", "--sizes", "5,20",
                                      "--arms", "finetune,joint", "--resample", "false", "--lr", ""])
    config = study_config_from_args(args)
    assert config.train.epochs == 2  # given explicitly
    assert config.train.lr == PRESETS["quick"]["lr"]  # empty: from the preset
    assert config.train == preset_train_config("quick", {"epochs": 2})
    assert (config.sizes, config.arms, config.resample) == ((5, 20), ("finetune", "joint"), False)


def test_study_defaults_are_the_protocol():

    assert study_config_from_args(build_parser().parse_args(["study"])) == StudyConfig()


@pytest.mark.parametrize("bad, message", [({"arms": ("finetune", "replay")}, "unknown arms"),
                                          ({"sizes": (0, 5)}, "sizes"), ({"repeats": 0}, "repeats")])
def test_bad_study_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(**bad)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(KeyError, match="protocol"):
        preset_train_config("fast")


@pytest.mark.parametrize("command, config_class", [("base", BaseConfig), ("finetune", FinetuneConfig),
                                                    ("tune", TuneConfig)])
def test_threads_is_a_flag_of_every_training_command(command, config_class):
    """0 (resolved as the command starts: ``segft.machine.resolve_threads``) unless given."""
    assert config_from_args(config_class, build_parser().parse_args([command])).train.threads == 0
    assert config_from_args(config_class, build_parser().parse_args([command, "--threads", "3"])).train.threads == 3


def test_study_threads_flag_overrides_the_preset():

    assert study_config_from_args(build_parser().parse_args(["study", "--preset", "quick"])).train.threads == 0
    config = study_config_from_args(build_parser().parse_args(["study", "--preset", "quick", "--threads", "2"]))
    assert config.train == preset_train_config("quick", {"threads": 2})


def test_negative_threads_fail_in_one_line(capsys):
    from segft.cli import main

    assert main(["base", "--threads", "-1"]) == 2
    assert "threads must be >= 0" in capsys.readouterr().err
