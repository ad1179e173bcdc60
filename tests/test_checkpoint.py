"""Tests for segft.checkpoint: round trip, and refusal of missing, foreign or tampered files."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import perturbed_model
from segft.checkpoint import (CONFIG_FILE, FORMAT, WEIGHTS_FILE, CheckpointError, InferenceSettings, load_checkpoint,
                              read_checkpoint_config, save_checkpoint)
from segft.config import ModelConfig
from segft.models import AttentionGate, build_model

CONFIG = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
SETTINGS = InferenceSettings(patch_size=32, overlap=0.25)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A model whose weights and batch-norm statistics differ from a freshly built one's."""
    return perturbed_model(CONFIG)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, trained):
    """One saved checkpoint, read by the tests that do not change it (a resnet18 weights file is ~45 MB)."""
    return save_checkpoint(trained, CONFIG, SETTINGS, tmp_path_factory.mktemp("saved") / "ckpt")


@pytest.fixture
def checkpoint(tmp_path, saved):
    """A checkpoint folder to tamper with: the saved ``model.json``, no weights yet."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    shutil.copy(saved / CONFIG_FILE, directory / CONFIG_FILE)
    return directory


def test_round_trip_gives_identical_outputs(saved, trained):
    model, config, settings = load_checkpoint(saved)
    assert (config, settings) == (CONFIG, SETTINGS)
    assert isinstance(config.decoder_channels, tuple)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = trained(x)
        assert torch.equal(model.eval()(x), expected)
        torch.manual_seed(0)
        fresh = build_model(CONFIG).eval()(x)
    assert not torch.allclose(fresh, expected)  # the check above would catch weights that were not loaded


def test_round_trip_restores_every_tensor_including_batch_norm_statistics(saved, trained):
    model, _, _ = load_checkpoint(saved)
    loaded, original = model.state_dict(), trained.state_dict()
    assert loaded.keys() == original.keys()
    assert any("running_mean" in key for key in loaded)
    for key in original:
        assert torch.equal(loaded[key], original[key]), key


def test_checkpoint_folder_holds_a_description_and_plain_weights(saved):
    assert sorted(path.name for path in saved.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    description = json.loads((saved / CONFIG_FILE).read_text())
    assert description == {
        "format": FORMAT,
        "model": {"arch": "attention_unet", "encoder": "resnet18", "encoder_weights": "", "encoder_depth": 3,
                  "decoder_channels": [16, 8, 4]},
        "inference": {"patch_size": 32, "overlap": 0.25, "normalization": "percentile"},
    }
    state = torch.load(saved / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())


def test_save_creates_missing_folders(tmp_path):
    model = AttentionGate(2, 2)  # any module: a small weights file
    directory = save_checkpoint(model, CONFIG, SETTINGS, tmp_path / "a" / "b")
    assert directory == tmp_path / "a" / "b" and (directory / WEIGHTS_FILE).is_file()
    assert torch.load(directory / WEIGHTS_FILE, weights_only=True).keys() == model.state_dict().keys()


class RunsCodeWhenUnpickled:
    """Unpickling this makes a directory: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def code_object(tmp_path):
    return RunsCodeWhenUnpickled(str(tmp_path / "code-ran"))


def state_with_function(tmp_path):
    return collections.OrderedDict(weight=torch.zeros(1), hook=os.getcwd)


def random_bytes(tmp_path):
    return np.random.default_rng(0).bytes(256)


def empty_file(tmp_path):
    return b""


def foreign_state(tmp_path):
    """A plain tensor state dict of another architecture: safe to read but it does not fit."""
    return build_model(ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(8, 8, 8))).state_dict()


def missing_tensors(tmp_path):
    return {"head.weight": torch.zeros(1, 4, 3, 3)}


TAMPERED_CASES = [  # what replaces weights.pt, the reason in the message
    (code_object, "UnpicklingError"),
    (state_with_function, "UnpicklingError"),
    (random_bytes, "UnpicklingError"),
    (empty_file, "EOFError|UnpicklingError|RuntimeError"),
    (foreign_state, "RuntimeError.*size mismatch"),
    (missing_tensors, "RuntimeError.*Missing key"),
]


@pytest.mark.parametrize("make, reason", TAMPERED_CASES)
def test_tampered_weights_raise_checkpoint_error_naming_the_file(checkpoint, tmp_path, make, reason):
    content = make(tmp_path)
    path = checkpoint / WEIGHTS_FILE
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    pattern = rf"(?s){re.escape(str(path))}: cannot load the weights safely \({reason}"  # (?s): multi-line reason
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(checkpoint)
    assert not (tmp_path / "code-ran").exists()  # weights_only=True refused to run the pickled call


def test_missing_weights_raise_checkpoint_error(checkpoint):
    with pytest.raises(CheckpointError, match=re.escape(str(checkpoint / WEIGHTS_FILE))):
        load_checkpoint(checkpoint)


def missing(path):
    path.unlink()


def write(text):
    return lambda path: path.write_text(text)


BAD_DESCRIPTION_CASES = [  # change to model.json, expected message after the path
    (missing, r"cannot read the model description"),
    (write("{not json"), r"cannot read the model description"),
    (write(""), r"cannot read the model description"),
    (write('{"format": "segft-checkpoint-v0", "model": {}, "inference": {}}'), r"not a segft-checkpoint-v1"),
    (write('{"model": {}, "inference": {}}'), r"not a segft-checkpoint-v1 model description"),
    (write('["segft-checkpoint-v1"]'), r"not a segft-checkpoint-v1 model description"),
    (write('"segft-checkpoint-v1"'), r"not a segft-checkpoint-v1 model description"),
    # the right format, broken content: still a CheckpointError naming the file, not a bare KeyError
    (write('{"format": "segft-checkpoint-v1"}'), r"invalid segft-checkpoint-v1 model description \(KeyError: 'model'"),
    (write('{"format": "segft-checkpoint-v1", "model": {"encoder": "resnet18"}, "inference": {}}'),
     r"invalid .* \(KeyError: 'decoder_channels'"),
    (write('{"format": "segft-checkpoint-v1", "model": {"decoder_channels": [4], "depth": 3}, "inference": {}}'),
     r"invalid .* \(TypeError: .*depth"),
    (write('{"format": "segft-checkpoint-v1", "model": {"decoder_channels": [4]}, "inference": {"tile": 3}}'),
     r"invalid .* \(TypeError: .*tile"),
    (write('{"format": "segft-checkpoint-v1", "model": [1], "inference": {}}'), r"invalid .* \(TypeError"),
    (write('{"format": "segft-checkpoint-v1", "model": {"decoder_channels": [4]}, "inference": '
           '{"normalization": "zscore"}}'), r"invalid .* \(ValueError: unknown normalization 'zscore'"),
]


@pytest.mark.parametrize("change, message", BAD_DESCRIPTION_CASES)
def test_bad_model_description_raises_checkpoint_error(checkpoint, change, message):
    (checkpoint / WEIGHTS_FILE).write_bytes(b"")  # never read: the description is checked first
    path = checkpoint / CONFIG_FILE
    change(path)
    pattern = rf"{re.escape(str(path))}: {message}"
    with pytest.raises(CheckpointError, match=pattern):
        read_checkpoint_config(checkpoint)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(checkpoint)


def test_missing_folder_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nowhere" / CONFIG_FILE))):
        load_checkpoint(tmp_path / "nowhere")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_a_description_from_before_normalization_existed_reads_as_percentile(saved, tmp_path):
    """Checkpoints written before the setting existed were all trained on percentile-normalized images."""
    shutil.copytree(saved, tmp_path / "old")
    path = tmp_path / "old" / CONFIG_FILE
    description = json.loads(path.read_text())
    del description["inference"]["normalization"]
    path.write_text(json.dumps(description))
    assert read_checkpoint_config(tmp_path / "old")[1].normalization == "percentile"
