"""segft.inference streams windows: batch by batch, blended as they come, with the same result as cutting every
window at once and blending them afterwards (the algorithm it replaced, kept here as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segft.config import ModelConfig
from segft.data.normalize import normalize_image
from segft.data.patches import extract_patches, gaussian_weight
from segft.inference import SlidingWindowSegmenter, sliding_window_predict, window_stride
from segft.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


class WindowContext(nn.Module):
    """A deterministic stand-in model: a fixed 5 x 5 convolution plus the window's mean, so each window's output
    depends on exactly where it was cut and how it was padded. No batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 5, padding=2)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) / 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x.mean(dim=(2, 3), keepdim=True)


class TopLeftPixel(nn.Module):
    """Every pixel of a window gets the window's top-left pixel as its logit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :1, :1].expand_as(x)


@torch.inference_mode()
def all_windows_at_once(model: nn.Module, image: np.ndarray, patch_size: int, overlap: float) -> np.ndarray:
    """The previous algorithm: cut every window, predict them all, then blend them with the Gaussian weight."""
    patches, origins = extract_patches(image.astype(np.float32), patch_size, window_stride(patch_size, overlap))
    probabilities = torch.sigmoid(model(torch.from_numpy(patches[:, None])))[:, 0].numpy()
    weight = gaussian_weight(patch_size)
    height, width = max(r for r, _ in origins) + patch_size, max(c for _, c in origins) + patch_size
    weighted_sum, weight_sum = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    for probability, (r, c) in zip(probabilities, origins):
        weighted_sum[r : r + patch_size, c : c + patch_size] += probability * weight
        weight_sum[r : r + patch_size, c : c + patch_size] += weight
    return (weighted_sum / weight_sum)[: image.shape[0], : image.shape[1]]


SHAPES = [
    (75, 43),  # neither side a multiple of the stride
    (64, 64),  # windows end exactly at the border: no padding
    (33, 97),  # one pixel past a window
    (20, 13),  # smaller than one window: padding beyond one reflection
    (1, 40),  # one-pixel axes: symmetric padding
    (40, 1),
    (1, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("batch_size", [1, 5, 10_000])
def test_streamed_windows_give_the_all_at_once_result(shape, overlap, batch_size):
    model = WindowContext().eval()
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    streamed = sliding_window_predict(model, image, 16, overlap, batch_size)
    assert streamed.shape == shape and streamed.dtype == np.float32
    assert np.allclose(streamed, all_windows_at_once(model, image, 16, overlap), rtol=0, atol=1e-6)


def test_overlapping_windows_are_blended_with_the_gaussian_weight():
    # a 3 x 4 image, 3 x 3 windows at columns 0 and 1 (stride 1), each window predicting one constant
    image = np.zeros((3, 4), np.float32)
    image[0, 0], image[0, 1] = -2.0, 3.0  # the logits of the first and the second window
    first, second = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-3.0))
    side = np.exp(-1 / (2 * (3 / 8) ** 2))  # weight of a window's side column against its centre (sigma = 3 / 8)
    # middle row (the corners' weight is clamped to 1e-3): column 1 is the first window's centre and the second's
    # side, column 2 the other way round
    middle = [first, (first + side * second) / (1 + side), (side * first + second) / (1 + side), second]
    probabilities = sliding_window_predict(TopLeftPixel(), image, 3, overlap=0.7, batch_size=1)
    assert np.allclose(probabilities[1], middle, rtol=0, atol=1e-6)
    assert np.allclose(probabilities[:, 0], first) and np.allclose(probabilities[:, 3], second)


def test_a_real_model_gives_the_all_at_once_result_in_any_batch_size():
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))).eval()
    image = np.random.default_rng(1).integers(0, 256, (70, 45), dtype=np.uint8)
    results = [SlidingWindowSegmenter(model, 32, 0.5, batch_size).probabilities(image) for batch_size in (1, 4, 64)]
    reference = all_windows_at_once(model, normalize_image(image), 32, 0.5)
    assert all(np.allclose(result, reference, rtol=0, atol=1e-5) for result in results)
