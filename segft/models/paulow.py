"""The original study's network (PAULow), ported faithfully, as a selectable baseline (``arch=paulow``).

A port of ``AttentionUNet`` from NTUMMIO/PAULow ``utils/model/unet.py`` (MIT licence) with its default arguments:
the same leaf modules in the same order, the same parameters (8,134,954 for one input channel) and the same
state_dict keys, shapes and order, so a checkpoint of the original loads into it as it is. Checked against
``../shared/reference/paulow`` (tests/test_models.py): with every weight filled from a formula, its output
matches the original's to about 1e-7.

The network, a plain Attention U-Net with 3 poolings:

- Encoder ``conv1``-``conv3`` (64, 128, 256 channels), each followed by 2 x 2 max pooling, and the bottleneck
  ``conv4`` (512 channels). Every block is residual: ``act2(norm2(conv2(act1(norm1(conv1(x))))) + residual(x))``
  with two 3 x 3 weight-standardized convolutions with bias (Qiao et al. 2019, "Micro-Batch Training with
  Batch-Channel Normalization and Weight Standardization": each output channel's weights minus their mean,
  divided by their unbiased standard deviation + 1e-5, at every call), GroupNorm with 8 groups (Wu & He 2018,
  "Group Normalization"), LeakyReLU (slope 0.01) and a 1 x 1 convolution with bias on the residual path (in
  every block: the channels always change).
- Decoder, 3 stages: 2 x 2 stride-2 transposed convolution (``up3``-``up1``), an additive attention gate (Oktay
  et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas"; ``att3``-``att1``) on the skip
  connection, concatenation ``[gated skip, upsampled]``, a residual block (``conv3_1``-``conv1_1``) and
  Dropout2d(0.2) (``drop3``-``drop1``; the only dropout in the network).
- The gate: ``skip * psi(act(W_g(g) + W_x(skip)))`` with the upsampled decoder feature as ``g``; ``W_g`` and
  ``W_x`` are 1 x 1 convolutions with bias to half the skip's channels, each followed by GroupNorm(8); ``act`` is
  LeakyReLU (0.01); ``psi`` is a 1 x 1 convolution with bias to one channel, GroupNorm(1) and a sigmoid.
- Head ``final``: a 1 x 1 convolution with bias to one channel. The original returns its output as it is (no
  sigmoid), so it is already the logit map segft expects.

Where it differs from segft's default model (``AttentionUnet``: timm's MobileNetV3-Small encoder at depth 4 with
our 32-16-8-8 decoder, 0.97 M parameters): 3 poolings instead of 4 (input sides divisible by 8, not 16); 64 to
512 channels throughout (8.1 M parameters, far slower to train: README, "Performance"); weight standardization, GroupNorm
and LeakyReLU instead of plain convolutions, BatchNorm and ReLU, so it has no running statistics and
``freeze=norm`` changes nothing on it; residual blocks; transposed-convolution upsampling instead of nearest
neighbour; gates with biased projections and GroupNorm; the skip before the upsampled feature in the
concatenation; dropout in the decoder; a 1 x 1 head instead of a 3 x 3 one.

Attribute names are the original's. The order of a decoder block and its dropout is read from the original's
module order (dropout after the block); evaluation, and so the reference, does not depend on it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segft.models.freezing import Freezable

CHANNELS = (64, 128, 256, 512)
GROUPS = 8
DROPOUT = 0.2
SLOPE = 0.01  # nn.LeakyReLU's default, as in the original
WS_EPS = 1e-5


class WSConv2d(nn.Conv2d):
    """Convolution with weight standardization (Qiao et al. 2019), as in the original and Qiao et al.'s code:
    each output channel's weights minus their mean, divided by their unbiased standard deviation + 1e-5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.flatten(1).std(dim=1).view(-1, 1, 1, 1) + WS_EPS
        return F.conv2d(x, weight / std, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ResidualBlock(nn.Module):
    """``act2(norm2(conv2(act1(norm1(conv1(x))))) + residual(x))``: two 3 x 3 WS convolutions, GroupNorm(8),
    LeakyReLU, and a 1 x 1 convolution on the residual path."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = WSConv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(GROUPS, out_channels)
        self.act1 = nn.LeakyReLU(SLOPE)
        self.conv2 = WSConv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, out_channels)
        self.act2 = nn.LeakyReLU(SLOPE)
        self.residual = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(y)) + self.residual(x))


class PaulowAttentionGate(nn.Module):
    """The original's additive attention gate: ``x * psi(act(W_g(g) + W_x(x)))``, one coefficient in [0, 1] per
    pixel, shared by the skip's channels.

    Args:
        gate_channels: Channels of the gating signal ``g`` (the upsampled decoder feature).
        skip_channels: Channels of the skip connection ``x``.
        inter_channels: Channels of the intermediate space (the original: half the skip's).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(gate_channels, inter_channels, 1), nn.GroupNorm(GROUPS, inter_channels))
        self.W_x = nn.Sequential(nn.Conv2d(skip_channels, inter_channels, 1), nn.GroupNorm(GROUPS, inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.GroupNorm(1, 1), nn.Sigmoid())
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` (B, C_x, H, W) by ``g`` (B, C_g, H, W); returns a tensor of ``x``'s shape."""
        return x * self.psi(self.act(self.W_g(g) + self.W_x(x)))


class PaulowUnet(Freezable):
    """The original study's Attention U-Net: (B, in_channels, H, W) -> (B, 1, H, W) logits; H and W divisible by 8.

    Args:
        in_channels: Input channels (the original's ``img_ch``); segft feeds one grey channel.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4 = CHANNELS
        self.conv1 = ResidualBlock(in_channels, c1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = ResidualBlock(c1, c2)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = ResidualBlock(c2, c3)
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = ResidualBlock(c3, c4)

        self.up3 = nn.ConvTranspose2d(c4, c3, 2, stride=2)
        self.att3 = PaulowAttentionGate(c3, c3, c3 // 2)
        self.conv3_1 = ResidualBlock(2 * c3, c3)
        self.drop3 = nn.Dropout2d(DROPOUT)

        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.att2 = PaulowAttentionGate(c2, c2, c2 // 2)
        self.conv2_1 = ResidualBlock(2 * c2, c2)
        self.drop2 = nn.Dropout2d(DROPOUT)

        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.att1 = PaulowAttentionGate(c1, c1, c1 // 2)
        self.conv1_1 = ResidualBlock(2 * c1, c1)
        self.drop1 = nn.Dropout2d(DROPOUT)

        self.final = nn.Conv2d(c1, 1, 1)

    @property
    def encoder(self) -> nn.ModuleList:
        """The contracting path, ``conv1``-``conv4`` (everything before the first upsampling, like an smp encoder
        with its deepest stage), for ``freeze=encoder`` (segft.models.freezing). A view built at each call, not
        a registered submodule, so the state_dict keeps the original's keys."""
        return nn.ModuleList([self.conv1, self.conv2, self.conv3, self.conv4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) image -> (B, 1, H, W) logits."""
        e1 = self.conv1(x)
        e2 = self.conv2(self.pool1(e1))
        e3 = self.conv3(self.pool2(e2))
        d = self.conv4(self.pool3(e3))
        stages = (
            (self.up3, self.att3, self.conv3_1, self.drop3, e3),
            (self.up2, self.att2, self.conv2_1, self.drop2, e2),
            (self.up1, self.att1, self.conv1_1, self.drop1, e1),
        )
        for up, gate, block, drop, skip in stages:
            d = up(d)
            d = drop(block(torch.cat((gate(d, skip), d), dim=1)))
        return self.final(d)
