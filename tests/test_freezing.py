"""Freezing for fine-tuning: frozen weights do not move and frozen normalization statistics do not drift."""

from __future__ import annotations

import pytest
import torch

from segft.config import ModelConfig
from segft.models import AttentionUnet
from segft.models.freezing import freeze, unfreeze


def tiny_model() -> AttentionUnet:
    torch.manual_seed(0)
    return AttentionUnet(ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)))


def train_step(model: AttentionUnet) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(torch.randn(2, 1, 32, 32) * 3 + 5).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {name for name, value in module.state_dict().items() if not torch.equal(before[name], value)}


@pytest.mark.parametrize("mode, encoder_moves, decoder_stats_move", [
    ("none", True, True), ("norm", True, False), ("encoder", False, False),
])
def test_freeze_modes(mode, encoder_moves, decoder_stats_move):
    model = freeze(tiny_model(), mode)
    encoder, decoder = snapshot(model.encoder), snapshot(model.decoder)
    train_step(model)
    assert bool(changed(encoder, model.encoder)) is encoder_moves
    decoder_changes = changed(decoder, model.decoder)
    assert any(name.endswith("weight") for name in decoder_changes)  # the decoder always learns
    assert any(name.endswith("running_mean") for name in decoder_changes) is decoder_stats_move


def test_frozen_norm_layers_stay_in_eval_mode_after_train():
    model = freeze(tiny_model(), "encoder")
    model.train()
    assert model.training and not model.encoder.bn1.training and not model.decoder.blocks[0].conv1[1].training
    assert model.decoder.training
    model.eval()
    assert not model.training


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="none.*norm.*encoder"):
        freeze(tiny_model(), "decoder")


def test_freezing_patches_nothing_onto_the_instance_and_unfreeze_undoes_it():
    model = freeze(tiny_model(), "encoder")
    assert "train" not in vars(model)  # the class's train() does the work, as in smp
    assert all(not layer.training for layer in model.modules() if isinstance(layer, torch.nn.BatchNorm2d))
    unfreeze(model)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(layer.training for layer in model.modules() if isinstance(layer, torch.nn.BatchNorm2d))


def test_only_segft_networks_can_be_frozen():
    with pytest.raises(ValueError, match="not a segft network"):
        freeze(torch.nn.Conv2d(1, 1, 3), "norm")


@pytest.mark.parametrize("finetune_lr, trained_with", [(0.0, 1e-3), (1e-4, 1e-4)])
def test_a_run_from_a_base_model_trains_with_the_finetuning_rate(finetune_lr, trained_with):
    """``model_from_base`` hands the run its fine-tuning learning rate as ``lr`` (0: the base training's rate),
    and the base model's architecture; the base model stays untouched."""
    from segft.config import TrainConfig
    from segft.runs import BaseModel, model_from_base

    base = BaseModel("models:/segft-base/1", tiny_model(), ModelConfig(encoder="resnet18", encoder_depth=3,
                                                                         decoder_channels=(16, 8, 4)), 64)
    model, config = model_from_base(base, TrainConfig(lr=1e-3, finetune_lr=finetune_lr, freeze="encoder",
                                                      patch_size=64))
    assert config.lr == trained_with and config.model == base.model_config
    assert model is not base.model and all(p.requires_grad for p in base.model.parameters())


def test_a_negative_finetuning_rate_is_refused():
    from segft.config import TrainConfig

    with pytest.raises(ValueError, match="finetune_lr"):
        TrainConfig(finetune_lr=-1e-4)
