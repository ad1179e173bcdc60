"""Sliding-window prediction of a whole image with overlapping, Gaussian-blended patches.

The same shape as MONAI's ``sliding_window_inference`` / ``SlidingWindowInferer``, far shorter: 2-D, one channel.
Windows are cut, predicted and blended one batch at a time on the model's device, so that device holds three
image-sized float32 arrays (padded image, weighted sum, weight sum) and one batch, however many windows the image
has; the blended probabilities are copied to the host once per image, so a GPU never waits for the host between
batches (nor the training it shares the GPU with for an evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segft.config import AUTOCAST_MODES
from segft.data.normalize import normalize_image
from segft.data.patches import gaussian_weight, grid, pad_to


def resolve_autocast(mode: str, device: torch.device | str) -> bool:
    """Whether to run the model under bfloat16 autocast on ``device``.

    ``auto`` turns it on for CUDA only: on a CPU without native bfloat16 it is slower, and float32 is the
    reference the study's Dice comes from.

    Raises:
        ValueError: For a mode not in ``AUTOCAST_MODES``.
    """
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"unknown autocast mode {mode!r}; choose from {list(AUTOCAST_MODES)}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def window_stride(patch_size: int, overlap: float) -> int:
    """Stride between windows sharing ``overlap`` of their side.

    Raises:
        ValueError: If ``overlap`` is not in [0, 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, round(patch_size * (1 - overlap)))


@torch.inference_mode()
def sliding_window_predict(
    model: nn.Module,
    image: np.ndarray,
    patch_size: int,
    overlap: float = 0.5,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast: bool = False,
) -> np.ndarray:
    """Foreground probability of every pixel of a normalized 2-D image.

    Args:
        model: Maps (B, 1, p, p) to (B, 1, p, p) logits; put in eval mode by the caller.
        image: (H, W) float image, already normalized (``normalize_image``).
        patch_size: Window side ``p``.
        overlap: Fraction of the window shared with its neighbour.
        batch_size: Windows per forward pass.
        device: Where the model lives.
        autocast: Run the model under bfloat16 autocast (probabilities are still computed in float32).

    Returns:
        (H, W) float32 probabilities in [0, 1].
    """
    origins, padded_shape = grid(image.shape, patch_size, window_stride(patch_size, overlap))
    device = torch.device(device)
    padded = torch.from_numpy(pad_to(image.astype(np.float32, copy=False), padded_shape)).to(device)
    weight = torch.from_numpy(gaussian_weight(patch_size)).to(device)
    weighted_sum = torch.zeros(padded_shape, dtype=torch.float32, device=device)
    weight_sum = torch.zeros(padded_shape, dtype=torch.float32, device=device)
    for start in range(0, len(origins), batch_size):
        batch_origins = origins[start : start + batch_size]
        windows = torch.stack([padded[r : r + patch_size, c : c + patch_size] for r, c in batch_origins])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(windows[:, None])
        probabilities = torch.sigmoid(logits.float())[:, 0]
        for probability, (r, c) in zip(probabilities, batch_origins):
            weighted_sum[r : r + patch_size, c : c + patch_size] += probability * weight
            weight_sum[r : r + patch_size, c : c + patch_size] += weight
    weighted_sum /= weight_sum  # in place: no fourth image-sized array
    return weighted_sum[: image.shape[0], : image.shape[1]].cpu().numpy()  # the one copy to the host


@dataclass(frozen=True)
class SlidingWindowSegmenter:
    """A model plus the settings to segment raw images with it: normalize (as the model was trained:
    ``normalization``), slide, blend, threshold.

    ``channels_last`` puts the model's weights in channels-last layout (in place), which makes every convolution
    take its faster NHWC path (about 1.5x on a 2-core CPU; see the README's Performance section).
    """

    model: nn.Module
    patch_size: int = 128
    overlap: float = 0.5
    batch_size: int = 16
    threshold: float = 0.5
    device: torch.device | str = "cpu"
    autocast: bool = False
    channels_last: bool = True
    normalization: str = "percentile"

    def __post_init__(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """(H, W) raw image of any dtype -> (H, W) foreground probabilities."""
        self.model.eval()
        return sliding_window_predict(
            self.model, normalize_image(image, self.normalization), self.patch_size, self.overlap, self.batch_size, self.device,
            self.autocast,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W) raw image -> (H, W) boolean mask (probability > threshold)."""
        return self.probabilities(image) > self.threshold
