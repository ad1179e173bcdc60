"""What fine-tuning keeps fixed, done the careful way of smp's ``freeze_encoder``.

Frozen weights get ``requires_grad = False``; frozen normalization layers also stay in eval mode when the model
is put in training mode, so their running statistics keep describing the data the base model was trained on
(updating them to the new dataset's statistics is a large part of forgetting the old one).
"""

from __future__ import annotations

from torch import nn

from segft.config import FREEZE_MODES


def norm_layers(module: nn.Module) -> list[nn.Module]:
    """Every normalization layer of ``module`` (BatchNorm, GroupNorm, LayerNorm)."""
    return [m for m in module.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))]


class Freezable(nn.Module):
    """Base class of segft's networks: ``train()`` keeps the normalization layers in eval mode while the model is
    frozen (``freeze``), as smp's ``SegmentationModel.train`` does for a frozen encoder. A class-level method,
    so nothing is patched onto an instance and a state dict is unaffected."""

    frozen: str = "none"

    def train(self, mode: bool = True) -> "Freezable":
        super().train(mode)
        if self.frozen != "none":
            for layer in norm_layers(self):
                layer.eval()
        return self


def freeze(model: Freezable, mode: str) -> Freezable:
    """Freeze part of ``model``: nothing (``none``), the normalization statistics of the whole model (``norm``),
    or those statistics and the encoder's weights (``encoder``; needs an ``encoder`` attribute). ``unfreeze``
    undoes it.

    ``encoder`` keeps every normalization layer's statistics, not only the encoder's: statistics updated to the
    new dataset anywhere in the network shift the base model's features on the old one.

    Raises:
        ValueError: For an unknown mode (the message lists the valid ones) or a model that is not ``Freezable``.
    """
    if mode not in FREEZE_MODES:
        raise ValueError(f"unknown freeze mode {mode!r}; choose from {list(FREEZE_MODES)}")
    if not isinstance(model, Freezable):
        raise ValueError(f"{type(model).__name__} is not a segft network (segft.models.freezing.Freezable)")
    if mode == "encoder":
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    model.frozen = mode
    return model.train(model.training)


def unfreeze(model: Freezable) -> Freezable:
    """Make every weight trainable and let normalization statistics follow training mode again."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.frozen = "none"
    return model.train(model.training)
