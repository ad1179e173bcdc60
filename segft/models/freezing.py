"""What fine-tuning keeps fixed, done the careful way of smp's ``freeze_encoder``.

Frozen weights get ``requires_grad = False``; frozen normalization layers also stay in eval mode when the model
is put in training mode, so their running statistics keep describing the data the base model was trained on
(updating them to the new dataset's statistics is a large part of forgetting the old one).
"""

from __future__ import annotations

from torch import nn

from segft.config import FREEZE_MODES


def _norm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))]


def freeze(model: nn.Module, mode: str) -> nn.Module:
    """Freeze part of ``model`` in place: nothing (``none``), the normalization statistics of the whole model
    (``norm``), or those statistics and the encoder's weights (``encoder``; needs an ``encoder`` attribute).

    ``encoder`` keeps every normalization layer's statistics, not only the encoder's: statistics updated to the
    new dataset anywhere in the network shift the base model's features on the old one.

    Raises:
        ValueError: For an unknown mode; the message lists the valid ones.
    """
    if mode not in FREEZE_MODES:
        raise ValueError(f"unknown freeze mode {mode!r}; choose from {list(FREEZE_MODES)}")
    if mode == "none":
        return model
    if mode == "encoder":
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    frozen_norms = _norm_layers(model)
    train = model.train

    def train_keeping_norms_frozen(mode: bool = True) -> nn.Module:
        train(mode)
        for layer in frozen_norms:
            layer.eval()
        return model

    model.train = train_keeping_norms_frozen  # instance attribute: checkpoints (state dicts) are unaffected
    model.train(model.training)
    return model
