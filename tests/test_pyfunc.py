"""The whole-image pyfunc, saved to a local folder (no tracking store): inputs, params, signature, example, tiling,
tampered files."""

from __future__ import annotations

import json
import os
import shutil

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from conftest import perturbed_model
from segft import tracking
from segft.checkpoint import WEIGHTS_FILE, CheckpointError, InferenceSettings, save_checkpoint
from segft.config import ModelConfig
from segft.data.readers import to_single_channel
from segft.inference import SlidingWindowSegmenter
from segft.pyfunc import SegmentationModel, as_images, example_image, pyfunc_arguments

CONFIG = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))
SETTINGS = InferenceSettings(patch_size=32, overlap=0.5)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    """A small model whose weights and batch-norm statistics are not the initial ones (varied predictions)."""
    return perturbed_model(CONFIG)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(pyfunc folder, the model it holds)``."""
    root = tmp_path_factory.mktemp("model")
    model = tiny_model()
    checkpoint = save_checkpoint(model, CONFIG, SETTINGS, root / "checkpoint")
    return tracking.save_model(pyfunc_arguments(checkpoint), root / "pyfunc"), model


@pytest.fixture(scope="module")
def pyfunc(saved):
    return mlflow.pyfunc.load_model(str(saved[0]))


@pytest.fixture(scope="module")
def segmenter(saved):
    return SlidingWindowSegmenter(saved[1], patch_size=SETTINGS.patch_size, overlap=SETTINGS.overlap)


def _image(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
    return (rng.random(shape) * high).astype(dtype)


INPUT_CASES = [  # name, input, output shape
    ("uint8 image smaller than a patch", _image((23, 29)), (23, 29)),
    ("uint8 image of odd size", _image((45, 71)), (45, 71)),
    ("uint16 stack", _image((3, 40, 50), np.uint16), (3, 40, 50)),
    ("float32 image", _image((40, 70), np.float32), (40, 70)),
    ("float64 image", _image((40, 70), np.float64), (40, 70)),
    ("bool image", _image((40, 40)) > 128, (40, 40)),
    ("RGB image", _image((40, 50, 3)), (40, 50)),
    ("RGBA image", _image((40, 50, 4), np.uint16), (40, 50)),
    ("stack of RGB images", _image((2, 40, 50, 3)), (2, 40, 50)),
    ("nested lists, as JSON gives them", _image((20, 30)).astype(int).tolist(), (20, 30)),
]


@pytest.mark.parametrize("name, model_input, shape", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_predict_gives_a_uint8_mask_of_the_input_image_shape(pyfunc, segmenter, name, model_input, shape):
    masks = pyfunc.predict(model_input)
    assert masks.shape == shape and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    images, _ = as_images(model_input)
    expected = np.stack([segmenter(image) for image in images]).reshape(shape)
    np.testing.assert_array_equal(masks, expected)


def test_colour_images_use_the_readers_rule(pyfunc, segmenter):
    rgb = _image((40, 50, 3))
    np.testing.assert_array_equal(pyfunc.predict(rgb), segmenter(to_single_channel(rgb, "rgb")))


def test_dtype_does_not_change_the_mask(pyfunc):
    image = _image((60, 70))
    masks = [pyfunc.predict(image.astype(dtype)) for dtype in (np.uint8, np.uint16, np.float32, np.int64)]
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])


def _nan_block() -> np.ndarray:
    image = np.ones((40, 40), np.float32)
    image[5:15, 5:15] = np.nan
    return image


@pytest.mark.parametrize("model_input, params, message", [
    (np.zeros((10,), np.uint8), None, "expected an image"),
    (np.zeros((2, 3, 40, 40, 1), np.uint8), None, "expected an image"),
    (np.zeros((2, 40, 40, 5), np.uint8), None, "expected an image"),
    (np.zeros((0, 10), np.uint8), None, "empty"),
    (np.zeros((40, 40), np.complex64), None, "unsupported pixel type complex"),
    (_nan_block(), None, "100 of 1600 pixels are NaN or infinite"),
    (np.zeros((40, 40), np.uint8), {"batch_size": 0}, "batch_size >= 1"),
    (np.zeros((40, 40), np.uint8), {"threshold": 2.0}, "threshold <= 1"),
    (np.zeros((40, 40), np.uint8), {"overlap": 1.0}, "overlap must be in"),
])
def test_bad_inputs_are_refused_as_invalid_parameters_in_one_line(pyfunc, model_input, params, message):
    """A client's mistake reaches it as MLflow's invalid-parameter error carrying segft's one-line message (the
    scoring server answers 400 with it)."""
    with pytest.raises(MlflowException, match=message) as caught:
        pyfunc.predict(model_input, params=params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert caught.value.message.startswith("segft: ") and "\n" not in caught.value.message


def test_probabilities_and_threshold(pyfunc):
    image = _image((50, 60))
    probabilities = pyfunc.predict(image, params={"return_probabilities": True})
    assert probabilities.dtype == np.float32 and probabilities.shape == (50, 60)
    assert 0 <= probabilities.min() and probabilities.max() <= 1
    np.testing.assert_array_equal(pyfunc.predict(image), (probabilities > 0.5).astype(np.uint8))
    threshold = float(np.median(probabilities))
    np.testing.assert_array_equal(pyfunc.predict(image, params={"threshold": threshold}),
                                  (probabilities > threshold).astype(np.uint8))


def test_batch_size_does_not_change_the_probabilities(pyfunc):
    image = _image((70, 90))
    one, many = (pyfunc.predict(image, params={"batch_size": b, "return_probabilities": True}) for b in (1, 64))
    np.testing.assert_allclose(one, many, atol=1e-5)


@pytest.mark.parametrize("params, message", [({"threshold": "high"}, "threshold"), ({"overlap": 1.0}, "overlap"),
                                             ({"batch_size": 0}, "batch_size")])
def test_bad_params_are_refused(pyfunc, params, message):
    with pytest.raises((MlflowException, ValueError), match=message):
        pyfunc.predict(_image((40, 40)), params=params)


def test_tiling_is_seamless(pyfunc):
    """Two overlapping parts of an image give the whole image's probabilities well inside their shared columns.

    The parts start at multiples of the window stride (16) so their windows line up with the whole image's, and
    every part holds 10 % pixels at 0 and 10 % at 255, so per-image normalization maps each part alike.
    """
    image = _image((64, 320))
    rows, cols = np.indices(image.shape)
    image[(rows + cols) % 10 == 0], image[(rows + cols) % 10 == 5] = 0, 255
    left, right, patch = 256, 96, SETTINGS.patch_size  # parts [0, 256) and [96, 320): shared [96, 256)
    params = {"return_probabilities": True}
    whole = pyfunc.predict(image, params=params)
    parts = pyfunc.predict(image[:, :left], params=params), pyfunc.predict(image[:, right:], params=params)
    inside = slice(right + patch, left - patch)
    np.testing.assert_allclose(parts[0][:, inside], whole[:, inside], atol=1e-5)
    np.testing.assert_allclose(parts[1][:, inside.start - right : inside.stop - right], whole[:, inside], atol=1e-5)
    assert whole[:, inside].std() > 0  # the comparison is not between constant maps


def test_signature_declares_the_params_and_leaves_the_input_open(saved):
    signature = Model.load(str(saved[0])).signature
    assert signature.inputs is None  # any rank and dtype: see segft.pyfunc
    defaults = {spec.name: spec.default for spec in signature.params.params}
    assert defaults == {"overlap": SETTINGS.overlap, "batch_size": 16, "threshold": 0.5,
                        "return_probabilities": False}
    assert signature.outputs.numpy_types()[0] == np.uint8


def test_input_example_is_a_small_image_that_serving_accepts(saved, pyfunc, tmp_path):
    """The logged example, sent as the scoring server receives it (the check MLflow runs when logging)."""
    path = str(saved[0])
    serving_input = Model.load(path).get_serving_input(path)
    assert np.array_equal(np.array(json.loads(serving_input)["inputs"]), example_image())
    (tmp_path / "in.json").write_text(serving_input)
    mlflow.models.predict(path, input_path=str(tmp_path / "in.json"), output_path=str(tmp_path / "out.json"),
                          env_manager="local")
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    np.testing.assert_array_equal(np.array(predictions), pyfunc.predict(example_image()))


class RunsCodeWhenUnpickled:
    """Unpickling this makes a directory: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_tampered_weights_are_refused_without_running_code(saved, tmp_path):
    copy = shutil.copytree(saved[0], tmp_path / "pyfunc")
    weights = copy / "artifacts" / "checkpoint" / WEIGHTS_FILE
    torch.save({"weight": RunsCodeWhenUnpickled(str(tmp_path / "code-ran"))}, weights)
    with pytest.raises(CheckpointError, match="cannot load the weights safely"):
        tracking.load_model(str(copy))
    assert not (tmp_path / "code-ran").exists()


def test_load_time_settings_reach_the_model(saved):
    with pytest.raises(ValueError, match="unknown autocast mode 'sometimes'"):
        tracking.load_model(str(saved[0]), {"device": "cpu", "autocast": "sometimes"})
    model = tracking.load_model(str(saved[0]), {"device": "cpu", "autocast": "off"})
    assert model.predict(_image((40, 40))).shape == (40, 40)


def test_unknown_model_uri_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load model"):
        tracking.load_model(str(tmp_path / "no-such-model"))


def test_the_pyfunc_normalizes_as_the_checkpoint_says(saved, tmp_path):
    """A model trained on ``deviation``-normalized images is served with that normalization, not the default."""
    checkpoint = save_checkpoint(saved[1], CONFIG, InferenceSettings(32, 0.5, "deviation"), tmp_path / "checkpoint")
    served = mlflow.pyfunc.load_model(str(tracking.save_model(pyfunc_arguments(checkpoint), tmp_path / "pyfunc")))
    image = _image((40, 70))
    expected = SlidingWindowSegmenter(saved[1], patch_size=32, overlap=0.5, normalization="deviation")
    probabilities = served.predict(image, params={"return_probabilities": True})
    assert np.allclose(probabilities, expected.probabilities(image), atol=1e-5)
    percentile = SlidingWindowSegmenter(saved[1], patch_size=32, overlap=0.5).probabilities(image)
    assert not np.allclose(probabilities, percentile, atol=1e-3)


def test_the_checkpoint_alone_gives_the_pyfuncs_results(saved, pyfunc, tmp_path):
    """``segft predict``'s model: downloaded (no code imported) and rebuilt from the checkpoint, it gives what
    MLflow's loader and the pyfunc give, for masks and probabilities alike."""
    model = SegmentationModel(tracking.download_checkpoint(str(saved[0]), tmp_path), "cpu", "off")
    for model_input, params in [(_image((45, 71)), None), (_image((2, 40, 50, 3)), {"overlap": 0.25}),
                                (_image((40, 40)), {"return_probabilities": True, "batch_size": 3})]:
        np.testing.assert_array_equal(model.predict(model_input, params), pyfunc.predict(model_input, params=params))


@pytest.mark.parametrize("path", ["../../elsewhere", "/etc"])
def test_a_checkpoint_path_outside_the_model_is_refused(saved, tmp_path, path):
    copy = shutil.copytree(saved[0], tmp_path / "pyfunc")
    mlmodel = copy / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("path: artifacts/checkpoint", f"path: {path}"))
    with pytest.raises(ValueError, match="outside the model"):
        tracking.download_checkpoint(str(copy), tmp_path / "download")
