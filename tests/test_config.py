"""MLproject parameters, CLI flags and config dataclasses share names and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segft.cli import _leaf_fields, _default, build_parser, config_from_args
from segft.config import BaseConfig, FinetuneConfig, ModelConfig, TrainConfig

MLPROJECT = Path(__file__).resolve().parents[1] / "MLproject"
ENTRY_POINTS = [("base", BaseConfig), ("finetune", FinetuneConfig)]


def dataclass_defaults(cls: type) -> dict[str, object]:
    """Defaults as MLproject writes them (tuples as comma-separated strings)."""
    defaults = {field.name: _default(field) for field, _, _ in _leaf_fields(cls)}
    return {name: ",".join(map(str, v)) if isinstance(v, tuple) else v for name, v in defaults.items()}


@pytest.fixture(scope="module")
def project() -> dict:
    return yaml.safe_load(MLPROJECT.read_text())


@pytest.mark.parametrize("entry_point, config_class", ENTRY_POINTS)
def test_mlproject_defaults_match_dataclasses(project, entry_point, config_class):
    defaults = dataclass_defaults(config_class)
    parameters = project["entry_points"][entry_point]["parameters"]
    for name, spec in parameters.items():
        assert name in defaults, f"MLproject parameter {name} is no field of {config_class.__name__}"
        assert spec["default"] == defaults[name], f"{entry_point}.{name}: MLproject {spec['default']!r} != {defaults[name]!r}"


@pytest.mark.parametrize("entry_point, config_class", ENTRY_POINTS)
def test_mlproject_command_passes_every_parameter_to_its_flag(project, entry_point, config_class):
    spec = project["entry_points"][entry_point]
    command = spec["command"]
    assert command.startswith(f"python -m segft {entry_point} ")
    for name in spec["parameters"]:
        assert f"--{name.replace('_', '-')} {{{name}}}" in command


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
