"""Attention U-Net: an smp encoder, our attention decoder and a one-logit segmentation head."""

from __future__ import annotations

import difflib

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from segft.config import ModelConfig
from segft.models.decoder import AttentionUnetDecoder
from segft.models.freezing import Freezable
from segft.models.paulow import PaulowUnet


class AttentionUnet(Freezable):
    """Attention U-Net (Oktay et al. 2018) on any segmentation_models_pytorch encoder.

    One input channel (the normalized grey image), one output logit map of the input's size.
    Input height and width must be divisible by ``2 ** encoder_depth``.

    Args:
        config: ``encoder`` (smp encoder name, ``smp.encoders.get_encoder``; its KeyError lists the valid names),
            ``encoder_weights`` (pretrained weights name, or empty for random initialisation: nothing is
            downloaded), ``encoder_depth`` (encoder stages, 3-5) and ``decoder_channels`` (channels of each
            decoder block, deepest first; ``encoder_depth`` entries).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(
            config.encoder, in_channels=1, depth=config.encoder_depth, weights=config.encoder_weights or None
        )
        drop_unused_stages(self.encoder, config.encoder_depth)
        self.decoder = AttentionUnetDecoder(self.encoder.out_channels, config.decoder_channels)
        self.head = nn.Conv2d(config.decoder_channels[-1], 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) image -> (B, 1, H, W) logits."""
        return self.head(self.decoder(self.encoder(x)))


def drop_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Replace encoder stages deeper than ``depth`` by ``nn.Identity``.

    smp encoders keep every stage whatever their depth (a depth-4 resnet18 carries layer4's 8.4 M unused
    parameters); their ``get_stages()`` maps each stage's output stride to its modules, which lets us drop the
    stages the forward pass never reaches and keeps checkpoints small.
    """
    stages = encoder.get_stages() if hasattr(encoder, "get_stages") else {}
    unused = {id(module) for stride, modules in stages.items() if stride > 2**depth for module in modules}
    for name, child in list(encoder.named_children()):
        if id(child) in unused:
            setattr(encoder, name, nn.Identity())


def build_model(config: ModelConfig) -> nn.Module:
    """The model described by ``config``: ``AttentionUnet`` or the original study's ``PaulowUnet``."""
    if config.arch == "paulow":
        return PaulowUnet()
    return AttentionUnet(config)


#: Prefix of timm's encoders in smp (``tu-<timm model name>``).
TIMM_PREFIX = "tu-"


def encoder_names(include_timm: bool = False) -> list[str]:
    """Every encoder name ``ModelConfig.encoder`` takes: smp's own, and timm's as ``tu-<name>`` when asked."""
    names = sorted(smp.encoders.encoders)
    return names + [TIMM_PREFIX + name for name in timm.list_models()] if include_timm else names


def check_model_config(config: ModelConfig) -> None:
    """Build the model once, so that an unknown encoder or an encoder depth, decoder width or pretrained-weights
    name that does not fit fails before any run starts, in one line.

    Raises:
        ValueError: Naming the setting; for an unknown encoder, up to three close names and where to find all.
    """
    if config.arch == "attention_unet":
        name = config.encoder
        known = timm.is_model(name[len(TIMM_PREFIX):]) if name.startswith(TIMM_PREFIX) else name in smp.encoders.encoders
        if not known:
            close = difflib.get_close_matches(name, encoder_names(include_timm=name.startswith(TIMM_PREFIX)), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            listing = "segft encoders --timm" if name.startswith(TIMM_PREFIX) else "segft encoders"
            raise ValueError(f"unknown encoder {name!r}{hint} (`{listing}` lists them all)")
    try:
        build_model(config)
    except Exception as error:  # smp and timm raise KeyError, RuntimeError, ValueError, AssertionError...
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"cannot build arch={config.arch} encoder={config.encoder} encoder_depth="
                         f"{config.encoder_depth} decoder_channels={','.join(map(str, config.decoder_channels))}: "
                         f"{reason}") from error
