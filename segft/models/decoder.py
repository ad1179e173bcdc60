"""The attention decoder: U-Net decoder blocks whose skip connections pass through attention gates.

Follows the split of segmentation_models.pytorch (``decoders/unet/decoder.py``): blocks here, the public model
in ``model.py``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from segft.models.attention import AttentionGate


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3 x 3 convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionDecoderBlock(nn.Module):
    """Upsample x2, gate the skip connection with the upsampled signal, concatenate, two convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gate = AttentionGate(in_channels, skip_channels) if skip_channels else None
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.gate is not None:
            x = torch.cat([x, self.gate(x, skip)], dim=1)
        return self.conv2(self.conv1(x))


class AttentionUnetDecoder(nn.Module):
    """Decoder over an smp encoder's features.

    Args:
        encoder_channels: ``encoder.out_channels``: channels of the input and of each encoder stage.
        decoder_channels: Output channels of each decoder block, deepest first; one per encoder stage.

    Raises:
        ValueError: If the number of decoder blocks does not match the encoder depth.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]) -> None:
        super().__init__()
        stages = list(encoder_channels[1:])[::-1]  # deepest first; the input itself is no skip
        if len(decoder_channels) != len(stages):
            raise ValueError(
                f"decoder_channels has {len(decoder_channels)} entries but the encoder has {len(stages)} stages"
            )
        in_channels = [stages[0], *decoder_channels[:-1]]
        skip_channels = [*stages[1:], 0]  # the last block upsamples to full resolution without a skip
        self.blocks = nn.ModuleList(
            AttentionDecoderBlock(i, s, o) for i, s, o in zip(in_channels, skip_channels, decoder_channels)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: the encoder's outputs, shallowest first. Returns a full-resolution feature map."""
        stages = list(features[1:])[::-1]
        x, skips = stages[0], [*stages[1:], None]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x
