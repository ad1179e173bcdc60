"""The MLflow pyfunc that segments whole images with a segft checkpoint.

It is logged with MLflow's models-from-code (``segft/mlflow_model.py`` calls ``set_model``), so loading it
unpickles none of our objects: the checkpoint folder (``model.json`` + a plain tensor file read with
``torch.load(weights_only=True)``) is an artifact and the model is rebuilt from it. A tampered checkpoint fails to
load with ``segft.checkpoint.CheckpointError``.

Input (``predict(model_input, params)``), any size, any dtype the readers accept (uint8, uint16, float...):

* ``(H, W)``: one image;
* ``(H, W, C)`` with ``C`` in 1-4: one colour image, turned into one channel by the readers' rule
  (``segft.data.readers.to_single_channel``: BT.601 luminance, alpha ignored, grey-as-RGB kept);
* ``(N, H, W)`` (with ``W`` > 4): a stack of images; ``(N, H, W, C)``: a stack of colour images.

A 3-D array whose last axis has 1-4 entries is read as one colour image, never as a stack of images 1-4 pixels
wide. Output: uint8 masks (1 = foreground) of the input's image shape, ``(H, W)`` or ``(N, H, W)``; float32
foreground probabilities instead with ``return_probabilities``.

Signature: MLflow's tensor specs fix the rank and require the exact dtype (``mlflow.models.utils.
_enforce_tensor_spec`` casts nothing), so no tensor spec can say "2-D, 3-D or 4-D, uint8, uint16 or float". The
signature therefore declares no input schema (MLflow then enforces nothing on the input, and this class checks it
with one-line errors), declares the output of the common case (a uint8 ``(H, W)`` mask) and the ``params`` below;
the logged input example, a 64 x 64 uint8 image, shows the input's form.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Callable

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from segft import schema
from segft.checkpoint import InferenceSettings, load_checkpoint, read_checkpoint_config
from segft.config import PredictConfig
from segft.data.readers import to_single_channel
from segft.inference import SlidingWindowSegmenter, resolve_autocast, window_stride
from segft.device import resolve_device

#: ``predict`` params besides ``overlap`` (whose default is the overlap the model was evaluated with): the same
#: defaults as ``segft predict`` (``PredictConfig``).
DEFAULT_BATCH_SIZE = PredictConfig.batch_size
DEFAULT_THRESHOLD = PredictConfig.threshold
#: Colour images have at most this many channels (RGBA); see the module docstring for the rule.
MAX_CHANNELS = 4


def model_signature(settings: InferenceSettings) -> ModelSignature:
    """The logged signature: no input schema (see the module docstring), a uint8 mask out, and the params."""
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1), name="mask")]),
        params=ParamSchema([
            ParamSpec("overlap", "double", float(settings.overlap)),
            ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE),
            ParamSpec("threshold", "double", DEFAULT_THRESHOLD),
            ParamSpec("return_probabilities", "boolean", False),
        ]),
    )


def example_image(size: int = 64) -> np.ndarray:
    """The logged input example: a ``size`` x ``size`` uint8 image of a bright elongated cell on a dark ground.

    Small on purpose: MLflow validates the example by loading the model and running ``predict`` on it.
    """
    rows, cols = np.mgrid[:size, :size]
    cell = ((rows - size / 2) / (0.4 * size)) ** 2 + ((cols - size / 2) / (0.15 * size)) ** 2 < 1
    return np.where(cell, 180, 30).astype(np.uint8)


def as_images(model_input: Any) -> tuple[list[np.ndarray], Callable[[list[np.ndarray]], np.ndarray]]:
    """Split a model input into 2-D single-channel images, and a function that gives their results its shape.

    Raises:
        ValueError: For an empty input or one that is no image, colour image or stack of them.
        segft.data.readers.DataError: For a pixel type the readers refuse.
    """
    array = np.asarray(model_input)
    if array.size == 0:
        raise ValueError(f"expected an image, got an empty input of shape {array.shape}")
    colour = array.ndim in (3, 4) and array.shape[-1] <= MAX_CHANNELS
    if array.ndim == 2 or (array.ndim == 3 and colour):
        return [to_single_channel(array, "model input")], lambda results: results[0]
    if array.ndim in (3, 4) and (array.ndim == 3 or colour):
        images = [to_single_channel(page, f"model input [{i}]") for i, page in enumerate(array)]
        return images, np.stack
    raise ValueError(
        f"expected an image (H, W), a colour image (H, W, C<=4) or a stack (N, H, W) or (N, H, W, C<=4), "
        f"got shape {array.shape}"
    )


class InvalidRequest(MlflowException):
    """A bad input or parameter, as MLflow's invalid-parameter error (the scoring server answers 400) whose message
    is segft's one line and stays so: MLflow's scoring server rewrites ``message`` to ``Failed to predict data
    '<the whole input, an image as a list>'. Error: ...``, which buries the line under the echoed pixels."""

    def __init__(self, message: str) -> None:
        self._line = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:  # MLflow's rewrite is dropped; segft's line is the answer
        pass


class SegmentationModel:
    """A segft checkpoint loaded to segment whole images: what the pyfunc serves and ``segft predict`` runs.

    Built from the checkpoint folder alone (``model.json`` + weights read with ``weights_only``) by the installed
    segft: ``segft predict`` builds it without MLflow's loader, so no code logged with a model ever runs.

    Args:
        checkpoint: The checkpoint folder (``segft.checkpoint``).
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        autocast: ``off`` (float32), ``auto`` (bfloat16 on CUDA, float32 on CPU) or ``on``.

    Raises:
        ValueError: For an unknown device or autocast mode.
        segft.checkpoint.CheckpointError: If the checkpoint is missing or was tampered with.
    """

    def __init__(self, checkpoint: str | Path, device: str = PredictConfig.device,
                 autocast: str = PredictConfig.autocast) -> None:
        self.device = resolve_device(device)
        self.autocast = resolve_autocast(autocast, self.device)
        self.model, _, self.settings = load_checkpoint(Path(checkpoint), self.device)
        self.model.eval()

    def segmenter(self, params: dict[str, Any] | None = None) -> SlidingWindowSegmenter:
        """The segmenter for ``predict``'s ``params`` (``overlap``, ``batch_size``, ``threshold``; defaults as in
        the signature).

        Raises:
            ValueError: For a batch size below 1, a threshold outside [0, 1] or an overlap outside [0, 1).
        """
        params = params or {}
        segmenter = SlidingWindowSegmenter(
            self.model,
            patch_size=self.settings.patch_size,
            normalization=self.settings.normalization,
            overlap=float(params.get("overlap", self.settings.overlap)),
            batch_size=int(params.get("batch_size", DEFAULT_BATCH_SIZE)),
            threshold=float(params.get("threshold", DEFAULT_THRESHOLD)),
            device=self.device,
            autocast=self.autocast,
        )
        if segmenter.batch_size < 1 or not 0 <= segmenter.threshold <= 1:
            raise ValueError(f"need batch_size >= 1 and 0 <= threshold <= 1, got {segmenter.batch_size} and "
                             f"{segmenter.threshold}")
        window_stride(segmenter.patch_size, segmenter.overlap)  # refuses an overlap outside [0, 1)
        return segmenter

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Masks (uint8, 1 = foreground) or probabilities (float32, ``return_probabilities``) of the input's
        image shape; ``model_input`` is an image, a colour image or a stack (see the module docstring).

        Raises:
            ValueError: For a bad input or parameter (``segft.data.readers.DataError`` for refused pixels).
        """
        segmenter = self.segmenter(params)
        images, shape_results = as_images(model_input)
        if (params or {}).get("return_probabilities", False):
            return shape_results([segmenter.probabilities(image).astype(np.float32) for image in images])
        return shape_results([segmenter(image).astype(np.uint8) for image in images])


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """Segments whole images (``SegmentationModel``): normalize, sliding window with Gaussian blending, threshold.

    ``model_config`` (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``device`` (``auto``: CUDA when
    present, else CPU) and ``autocast`` (``off``, the default: float32; ``auto``: bfloat16 on CUDA, float32 on CPU; ``on``).
    """

    def load_context(self, context) -> None:
        config = context.model_config or {}
        self.segmentation = SegmentationModel(context.artifacts[schema.CHECKPOINT_ARTIFACT],
                                              str(config.get("device", PredictConfig.device)),
                                              str(config.get("autocast", PredictConfig.autocast)))

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Masks (uint8, 1 = foreground) or probabilities (float32) of the input's image shape.

        Args:
            context: Unused (MLflow's model context).
            model_input: One image, a colour image or a stack (see the module docstring).
            params: ``overlap``, ``batch_size``, ``threshold``, ``return_probabilities``; MLflow fills in the
                signature's defaults.
        """
        try:
            return self.segmentation.predict(model_input, params)
        except ValueError as error:  # bad input or params (DataError included): the client's fault
            raise InvalidRequest(f"segft: {error}") from error


#: What a logged model's environment installs, pinned to the versions that trained it (``pyfunc_arguments``).
REQUIREMENTS = ("mlflow", "torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy",
                "opencv-python-headless", "pandas", "tifffile", "tqdm")


def pinned_requirements() -> list[str]:
    """``REQUIREMENTS`` as ``name==version`` of this environment. A local version label (``+cu130``) is dropped,
    as MLflow's own inference does: such builds are not on PyPI, and the plain release is the same code."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def pyfunc_arguments(checkpoint_dir: Path) -> dict[str, Any]:
    """What ``mlflow.pyfunc.log_model``/``save_model`` take to log a checkpoint as this pyfunc: models-from-code
    (``segft/mlflow_model.py``), the checkpoint folder as artifact, the package as code, the signature, the input
    example and a default ``model_config`` (without one MLflow ignores load-time overrides)."""
    package_dir = Path(__file__).parent
    _, settings = read_checkpoint_config(checkpoint_dir)
    return {
        "python_model": str(package_dir / "mlflow_model.py"),
        "artifacts": {schema.CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
        "code_paths": [str(package_dir)],
        "signature": model_signature(settings),
        "input_example": example_image(),
        # load_model(model_config=...) may override these; without a default MLflow ignores the overrides
        "model_config": {"device": PredictConfig.device, "autocast": PredictConfig.autocast},
        "pip_requirements": pinned_requirements(),
    }
