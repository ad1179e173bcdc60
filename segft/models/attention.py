"""Additive attention gate (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas")."""

from __future__ import annotations

import torch
from torch import nn


class AttentionGate(nn.Module):
    """Weights a skip connection by a coefficient in [0, 1] computed from the skip and the decoder signal.

    ``alpha = sigmoid(psi(relu(W_g g + W_x x)))`` and the output is ``x * alpha``. As in MONAI's
    ``AttentionBlock``, the gating signal ``g`` is already at the skip's resolution (upsampled by the decoder),
    so no strided convolution is needed.

    Args:
        gate_channels: Channels of the gating signal ``g`` (the upsampled decoder feature).
        skip_channels: Channels of the skip connection ``x``.
        inter_channels: Channels of the intermediate space; ``skip_channels // 2`` (at least 1) when None.
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(skip_channels // 2, 1)
        self.project_gate = nn.Sequential(nn.Conv2d(gate_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.project_skip = nn.Sequential(nn.Conv2d(skip_channels, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` (B, C_x, H, W) by ``g`` (B, C_g, H, W); returns a tensor of ``x``'s shape."""
        alpha = self.psi(torch.relu(self.project_gate(g) + self.project_skip(x)))
        return x * alpha
