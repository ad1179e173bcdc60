"""Dynamic loss selection per patch, as in the PAULow study (patch-based Attention U-Net).

Each patch of a batch gets the loss that suits what the model currently predicts on it, judged from the
fraction of its pixels predicted as foreground (sigmoid > 0.5, i.e. logit > 0):

- no predicted foreground -> BCE (the patch looks like background: learn pixel-wise);
- predicted foreground below ``small_foreground`` (6.25 %) -> BCE + Tversky (small objects);
- otherwise -> Tversky + Focal Tversky (large objects: overlap-based losses).

The choice is made per sample, so one batch can mix all three branches; it uses the detached prediction, so it
selects a loss but is not itself differentiated.
"""

from __future__ import annotations

import torch
from torch import nn

from segft.config import LossConfig
from segft.losses.bce import BCELoss
from segft.losses.tversky import FocalTverskyLoss, TverskyLoss

#: Names of the branches, in the order of the indices returned by ``DynamicLoss.select``.
BRANCHES = ("bce", "bce_tversky", "tversky_focal")


class DynamicLoss(nn.Module):
    """Per-patch dynamic loss; ``forward`` returns the batch-mean loss and each patch's branch index.

    Args:
        config: Thresholds, Tversky weights, focal exponent and term weights.

    Raises:
        ValueError: If ``small_foreground`` is not in (0, 1].
    """

    def __init__(self, config: LossConfig = LossConfig()) -> None:
        super().__init__()
        if not 0 < config.small_foreground <= 1:
            raise ValueError(f"small_foreground must be in (0, 1], got {config.small_foreground}")
        self.config = config
        self.bce = BCELoss(reduction="none")
        self.tversky = TverskyLoss(config.tversky_alpha, config.tversky_beta, reduction="none")
        self.focal_tversky = FocalTverskyLoss(
            config.tversky_alpha, config.tversky_beta, config.focal_gamma, reduction="none"
        )

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Branch index per sample (B,): 0 = BCE, 1 = BCE + Tversky, 2 = Tversky + Focal Tversky."""
        predicted = (logits.detach() > 0).float()
        fraction = predicted.mean(dim=tuple(range(1, logits.ndim)))
        small = (fraction < self.config.small_foreground).long()
        empty = (fraction == 0).long()
        return 2 - small - empty

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses (B,) and branch indices (B,)."""
        c = self.config
        bce = c.weight_bce * self.bce(logits, target)
        tversky = c.weight_tversky * self.tversky(logits, target)
        focal = c.weight_focal_tversky * self.focal_tversky(logits, target)
        branch = self.select(logits)
        loss = torch.where(branch == 0, bce, torch.where(branch == 1, bce + tversky, tversky + focal))
        return loss, branch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch, and the branch index of each sample."""
        loss, branch = self.per_sample(logits, target)
        return loss.mean(), branch
