"""Brief training on the real fluorescence filament images of ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segft.config import ModelConfig, TrainConfig
from segft.data.dataset import load_image_set
from segft.inference import SlidingWindowSegmenter
from segft.metrics import confusion_counts
from segft.models import build_model
from segft.training import evaluate, make_patches, mean_dice, train


def dice(prediction, truth) -> float:
    """Dice of a whole image from its counts (1.0 when both masks are empty)."""
    return confusion_counts(prediction, truth).dice

FILAMENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "filaments"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FILAMENTS.is_dir(), reason="../shared/data/filaments is not available"),
]


def test_brief_training_beats_the_all_background_prediction():
    filaments = load_image_set(FILAMENTS, "filaments")
    train_set, test_set = filaments.subset(range(3)), filaments.subset(range(10, 14))
    config = TrainConfig(
        epochs=8, batch_size=8, lr=3e-3, patch_size=64, seed=0,
        model=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(32, 16, 8)),
    )
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    train(model, make_patches(train_set, config.patch_size), config)
    results = evaluate(SlidingWindowSegmenter(model, patch_size=config.patch_size), test_set)
    trivial = np.mean([dice(np.zeros_like(mask), mask) for mask in test_set.masks])
    assert trivial == 0.0  # every test image has filaments
    assert mean_dice(results) > 0.3
