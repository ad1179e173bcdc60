"""Losses: one per module, each with a ``reduction`` argument; the dynamic per-patch selection on top."""

from segft.losses.bce import BCELoss
from segft.losses.dynamic import BRANCHES, DynamicLoss
from segft.losses.tversky import FocalTverskyLoss, TverskyLoss

__all__ = ["BCELoss", "BRANCHES", "DynamicLoss", "FocalTverskyLoss", "TverskyLoss"]
