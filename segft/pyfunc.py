"""The MLflow pyfunc that segments whole images with a segft checkpoint.

It is logged with MLflow's models-from-code (``segft/mlflow_model.py`` calls ``set_model``), so loading it
unpickles none of our objects: the checkpoint folder is an artifact and the model is rebuilt from it.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

from segft.checkpoint import load_checkpoint
from segft.inference import SlidingWindowSegmenter
from segft.training import resolve_device


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """Input: one image (H, W) or a stack (N, H, W); output: uint8 masks (1 = foreground) of the same shape."""

    def load_context(self, context) -> None:
        device = resolve_device("auto")
        model, _, settings = load_checkpoint(context.artifacts["checkpoint"], device)
        self.segmenter = SlidingWindowSegmenter(
            model, patch_size=settings.patch_size, overlap=settings.overlap, device=device
        )

    def predict(self, context, model_input, params=None) -> np.ndarray:
        images = np.asarray(model_input)
        if images.ndim not in (2, 3):
            raise ValueError(f"expected an image (H, W) or a stack (N, H, W), got shape {images.shape}")
        stack = images[None] if images.ndim == 2 else images
        masks = np.stack([self.segmenter(image) for image in stack]).astype(np.uint8)
        return masks[0] if images.ndim == 2 else masks
