"""The dynamic loss of the PAULow study (patch-based Attention U-Net), per patch or per batch, with its fix.

The loss is chosen from the fraction of pixels predicted as foreground (sigmoid > 0.5, i.e. logit > 0):

- no predicted foreground -> BCE (the region looks like background: learn pixel-wise);
- predicted foreground below ``small_foreground`` (6.25 %) -> BCE + Tversky (small objects);
- otherwise -> Tversky + Focal Tversky (large objects: overlap-based losses).

``loss_scope`` says what a region is:

- ``batch``: the original (NTUMMIO/PAULow ``utils/training/trainer.py``): one choice for the whole batch, from
  the batch's predicted fraction, with Tversky and Focal Tversky computed over the whole batch as one region;
- ``patch``: one choice per patch, each patch its own region, the batch loss the mean over patches.

**The defect, and the fix** (``bce_in_every_branch``). A region whose target has no foreground has Tversky index
``smooth / (alpha FP + smooth)`` ~ 0 whatever the model predicts, so Tversky + Focal Tversky is a flat 2.0 with a
gradient of ~1e-11 there (``../shared/reference/paulow``: last case). When such a region's predicted foreground
exceeds ``small_foreground`` it lands in the third branch and its false positives cannot be trained away, while
foreground regions keep pushing predictions up: fine-tuning on a domain where the raw model over-predicts can
collapse to "everything is foreground". With ``bce_in_every_branch`` the third branch is BCE + Tversky + Focal
Tversky, so every region always gets at least BCE's pixel-wise gradient, which lowers false positives on an empty
target. BCE is added rather than swapped in for empty targets because swapping drove the built-in data to predict
nothing (issue 10's experiments).

**The default is the original's rule** (``loss_scope=batch``, no fix), chosen on validation Dice (README,
"Results"): in segft's own runs the original loss never collapsed to all foreground, while BCE in every branch
drove one of two base models of the built-in data to predict nothing at the quick preset. The fix is one setting
away, and a study flags a collapsed run either way (``segft.quality``).

The choice uses the detached prediction: it selects a loss but is not itself differentiated.
"""

from __future__ import annotations

import torch
from torch import nn

from segft.config import LossConfig
from segft.losses.bce import BCELoss
from segft.losses.reduction import sample_dims
from segft.losses.tversky import FocalTverskyLoss, TverskyLoss

#: Names of the branches, in the order of the indices returned by ``DynamicLoss.select``.
BRANCHES = ("bce", "bce_tversky", "tversky_focal")


class DynamicLoss(nn.Module):
    """Dynamic loss; ``forward`` returns the batch loss and each patch's branch index.

    Args:
        config: Scope, fix, thresholds, Tversky weights, focal exponent and term weights.

    Raises:
        ValueError: If ``small_foreground`` is not in (0, 1] or ``loss_scope`` is unknown.
    """

    def __init__(self, config: LossConfig = LossConfig()) -> None:
        super().__init__()
        self.config = config
        self.bce = BCELoss(reduction="none")
        self.tversky = TverskyLoss(config.tversky_alpha, config.tversky_beta, reduction="none")
        self.focal_tversky = FocalTverskyLoss(
            config.tversky_alpha, config.tversky_beta, config.focal_gamma, reduction="none"
        )

    def select(self, logits: torch.Tensor) -> torch.Tensor:
        """Branch index per sample (B,): 0 = BCE, 1 = BCE + Tversky, 2 = Tversky + Focal Tversky.

        In ``batch`` scope every sample gets the branch of the whole batch's predicted fraction.
        """
        fraction = (logits.detach() > 0).float().mean(dim=sample_dims(logits))
        if self.config.loss_scope == "batch":  # equal-sized patches: the mean of fractions is the batch's
            fraction = fraction.mean().expand_as(fraction)
        small = (fraction < self.config.small_foreground).long()
        empty = (fraction == 0).long()
        return 2 - small - empty

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses (B,) and branch indices (B,); their mean is the batch loss.

        In ``batch`` scope each sample carries the loss of the whole batch (one region).
        """
        c = self.config
        branch = self.select(logits)
        if c.loss_scope == "batch":  # the whole batch as one sample: BCE's mean is unchanged, Tversky is pooled
            logits, target = logits.reshape(1, -1), target.reshape(1, -1)
        bce = c.weight_bce * self.bce(logits, target)
        tversky = c.weight_tversky * self.tversky(logits, target)
        focal = c.weight_focal_tversky * self.focal_tversky(logits, target)
        third = tversky + focal + (bce if c.bce_in_every_branch else 0)
        loss = torch.where(branch == 0, bce, torch.where(branch == 1, bce + tversky, third))
        return loss, branch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of the batch (mean over samples), and the branch index of each sample."""
        loss, branch = self.per_sample(logits, target)
        return loss.mean(), branch
