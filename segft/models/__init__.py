"""Segmentation models: the attention gate, the attention decoder and the full Attention U-Net."""

from segft.models.attention import AttentionGate
from segft.models.model import AttentionUnet, build_model

__all__ = ["AttentionGate", "AttentionUnet", "build_model"]
