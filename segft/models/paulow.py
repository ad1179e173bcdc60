"""The original study's network (PAULow), written from its description, as a selectable baseline (``arch=paulow``).

A plain Attention U-Net without a pretrained-style encoder: 3 poolings with 64-128-256 channels and a 512-channel
bottleneck; residual blocks of two weight-standardized 3 x 3 convolutions (Qiao et al. 2019, "Micro-Batch Training
with Batch-Channel Normalization and Weight Standardization") each followed by GroupNorm(8) (Wu & He 2018) and
LeakyReLU; dropout 0.2 in every block; an additive attention gate (Oktay et al. 2018) on every skip connection.
About 8.1 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segft.models.attention import AttentionGate

CHANNELS = (64, 128, 256, 512)
GROUPS = 8
DROPOUT = 0.2


class WSConv2d(nn.Conv2d):
    """Convolution whose weights are standardized (zero mean, unit variance per output channel) at every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5
        return F.conv2d(x, (weight - mean) / std, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResidualBlock(nn.Module):
    """Two WS-conv + GroupNorm + LeakyReLU layers with a residual connection (1 x 1 projection when the
    channels change), then dropout."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = WSConv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(GROUPS, out_channels)
        self.conv2 = WSConv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, out_channels)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.dropout = nn.Dropout2d(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        y = self.norm2(self.conv2(y))
        return self.dropout(F.leaky_relu(y + self.shortcut(x), 0.01))


class PaulowUnet(nn.Module):
    """The original study's Attention U-Net: (B, 1, H, W) -> (B, 1, H, W) logits; H and W divisible by 8."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4 = CHANNELS
        # named ``encoder`` so that fine-tuning can freeze it like an smp encoder (segft.models.freezing)
        self.encoder = nn.ModuleList([ResidualBlock(1, c1), ResidualBlock(c1, c2), ResidualBlock(c2, c3)])
        self.bottleneck = ResidualBlock(c3, c4)
        self.up = nn.ModuleList([nn.ConvTranspose2d(a, b, 2, stride=2) for a, b in ((c4, c3), (c3, c2), (c2, c1))])
        self.gates = nn.ModuleList([AttentionGate(c, c) for c in (c3, c2, c1)])
        self.decoder = nn.ModuleList([ResidualBlock(2 * c, c) for c in (c3, c2, c1)])
        self.head = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, gate, block, skip in zip(self.up, self.gates, self.decoder, reversed(skips)):
            x = up(x)
            x = block(torch.cat([x, gate(x, skip)], dim=1))
        return self.head(x)
