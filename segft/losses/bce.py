"""Binary cross-entropy on logits, one value per sample when ``reduction="none"``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segft.losses.reduction import check_reduction, reduce, sample_dims


class BCELoss(nn.Module):
    """Mean binary cross-entropy over each sample's pixels.

    Args:
        reduction: ``none`` (one value per sample, shape (B,)), ``mean`` or ``sum`` over the batch.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` and ``target`` (B, 1, H, W); ``target`` in {0, 1}."""
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return reduce(per_pixel.mean(dim=sample_dims(per_pixel)), self.reduction)
