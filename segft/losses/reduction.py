"""The ``reduction`` argument shared by every segft loss (as in MONAI's losses)."""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if valid.

    Raises:
        ValueError: If it is not one of ``none``, ``mean``, ``sum``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to a (B,) tensor of per-sample losses."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def sample_dims(x: torch.Tensor) -> tuple[int, ...]:
    """All dimensions but the batch dimension: a loss summed over them is one value per sample."""
    return tuple(range(1, x.ndim))
