"""Tversky and Focal Tversky losses.

Tversky index (Salehi, Erdogmus & Gholipour 2017, "Tversky loss function for image segmentation using 3D fully
convolutional deep networks"): ``TI = (TP + s) / (TP + alpha FP + beta FN + s)`` on soft (sigmoid) predictions.
Focal Tversky (Abraham & Khan 2019, "A novel Focal Tversky loss function with improved Attention U-Net for lesion
segmentation"): ``(1 - TI) ** gamma``.
"""

from __future__ import annotations

import torch
from torch import nn

from segft.config import LossConfig
from segft.losses.reduction import check_reduction, reduce, sample_dims


def tversky_index(
    logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft Tversky index per sample, shape (B,): ``alpha`` weighs false positives, ``beta`` false negatives."""
    prob = torch.sigmoid(logits)
    dims = sample_dims(prob)
    tp = (prob * target).sum(dims)
    fp = (prob * (1 - target)).sum(dims)
    fn = ((1 - prob) * target).sum(dims)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _check_weights(alpha: float, beta: float) -> None:
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise ValueError(f"Tversky alpha and beta must be >= 0 and not both 0, got alpha={alpha}, beta={beta}")


class TverskyLoss(nn.Module):
    """``1 - TI`` (Salehi et al. 2017).

    Args:
        alpha: Weight on false positives (default: ``LossConfig``'s, the original study's).
        beta: Weight on false negatives.
        smooth: Added to numerator and denominator; makes an empty target with an empty prediction score 0.
        reduction: ``none`` (shape (B,)), ``mean`` or ``sum``.

    Raises:
        ValueError: For negative weights or an unknown reduction.
    """

    def __init__(self, alpha: float = LossConfig.tversky_alpha, beta: float = LossConfig.tversky_beta,
                 smooth: float = 1e-5, reduction: str = "mean") -> None:
        super().__init__()
        _check_weights(alpha, beta)
        self.alpha, self.beta, self.smooth = alpha, beta, smooth
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ti = tversky_index(logits, target, self.alpha, self.beta, self.smooth)
        return reduce(1 - ti, self.reduction)


class FocalTverskyLoss(nn.Module):
    """``(1 - TI) ** gamma`` (Abraham & Khan 2019); gamma < 1 raises the loss of nearly-right samples.

    Args:
        alpha: Weight on false positives.
        beta: Weight on false negatives.
        gamma: Focal exponent (default: ``LossConfig``'s, the original study's).
        smooth: See ``TverskyLoss``.
        reduction: ``none`` (shape (B,)), ``mean`` or ``sum``.

    Raises:
        ValueError: For negative weights, gamma <= 0 or an unknown reduction.
    """

    def __init__(
        self, alpha: float = LossConfig.tversky_alpha, beta: float = LossConfig.tversky_beta,
        gamma: float = LossConfig.focal_gamma, smooth: float = 1e-5, reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_weights(alpha, beta)
        if gamma <= 0:
            raise ValueError(f"Focal Tversky gamma must be > 0, got {gamma}")
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ti = tversky_index(logits, target, self.alpha, self.beta, self.smooth)
        # clamp: d/dx x**0.75 is infinite at 0, which would turn a perfect sample's gradient into NaN
        return reduce((1 - ti).clamp_min(1e-6) ** self.gamma, self.reduction)
