"""The fast training paths (segft.train_step: compiled, CUDA-graph, bfloat16, channels-last) take the eager steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segft.config import ModelConfig, TrainConfig
from segft.models import build_model
from segft.train_step import CUDA_GRAPH_WARMUP_STEPS, resolve_step_mode
from segft.training import Patches, train

TINY = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))

pytestmark = pytest.mark.usefixtures("one_thread")


def bright_patches(count: int, device: str = "cpu") -> Patches:
    """Noise patches whose foreground is their brightest pixels: learnable, and every branch of the loss occurs."""
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(count, 1, 32, 32)).astype(np.float32))
    return Patches(images.to(device), (images > 0.8).float().to(device))


def trajectory(patches: Patches, **overrides) -> tuple[list[float], torch.nn.Module]:
    """Epoch losses and the trained model of a tiny run from fixed initial weights (3 epochs of 3 steps).

    Adam's first steps move every weight by about the learning rate whatever its gradient's size, so rounding
    differences between two correct implementations grow from step to step; at lr 1e-3 they stay below 0.5 %
    of the loss over these 9 steps, while the loss itself falls by more than 3 %.
    """
    torch.manual_seed(0)
    model = build_model(TINY).to(patches.images.device)
    settings = dict(epochs=3, batch_size=4, lr=1e-3, patch_size=32, device=str(patches.images.device), model=TINY)
    logs = train(model, patches, TrainConfig(**{**settings, **overrides}))
    return [log.loss for log in logs], model


@pytest.fixture(scope="module")
def eager() -> tuple[list[float], torch.nn.Module]:
    return trajectory(bright_patches(12), step="eager")


def test_eager_run_learns(eager):
    losses, _ = eager
    assert losses[-1] < 0.97 * losses[0]  # so a step that skips the update cannot pass the comparisons below


@pytest.mark.slow
def test_compiled_step_follows_the_eager_trajectory(eager):
    losses, _ = trajectory(bright_patches(12), step="compile")
    np.testing.assert_allclose(losses, eager[0], rtol=5e-3)


def test_bfloat16_autocast_step_stays_close_to_float32(eager):
    losses, _ = trajectory(bright_patches(12), step="eager", autocast="on")
    assert losses != eager[0]  # the forward pass really ran in bfloat16
    np.testing.assert_allclose(losses, eager[0], rtol=0.02)


def test_channels_last_layout_takes_the_same_steps(eager):
    losses, model = trajectory(bright_patches(12), step="eager", channels_last=False)
    np.testing.assert_allclose(losses, eager[0], rtol=5e-3)
    assert all(channels_last_weights(eager[1])) and not any(channels_last_weights(model))


def channels_last_weights(model: torch.nn.Module) -> list[bool]:
    """Whether each 3 x 3 convolution over several channels stores its weight channels-last."""
    return [m.weight.is_contiguous(memory_format=torch.channels_last) for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 1]


@pytest.mark.parametrize("mode, device, expected", [("auto", "cpu", "eager"), ("auto", "cuda", "cuda_graph"),
                                                    ("compile", "cpu", "compile"), ("eager", "cuda", "eager")])
def test_resolve_step_mode(mode, device, expected):
    assert resolve_step_mode(mode, device) == expected


def test_cuda_graph_needs_a_cuda_device():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        trajectory(bright_patches(4), step="cuda_graph")


@pytest.mark.parametrize("field, value", [("step", "graph"), ("autocast", "bf16")])
def test_unknown_modes_are_refused_by_the_config(field, value):
    with pytest.raises(ValueError, match=f"unknown {field}"):
        TrainConfig(**{field: value})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("count", [12, 14])  # 14: every epoch ends with a partial batch, run eagerly
def test_cuda_graph_step_follows_the_eager_trajectory(count):
    patches = bright_patches(count, "cuda")
    assert 3 * (count // 4) > CUDA_GRAPH_WARMUP_STEPS + 1  # the graph is captured, then replayed
    expected, _ = trajectory(patches, step="eager")
    losses, _ = trajectory(patches, step="cuda_graph")
    assert losses[-1] < 0.97 * losses[0]
    np.testing.assert_allclose(losses, expected, rtol=5e-3)
