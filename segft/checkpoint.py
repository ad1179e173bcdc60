"""Model checkpoints that store how to rebuild the model, not a pickle of it (as nnU-Net does).

A checkpoint is a folder with ``model.json`` (the ``ModelConfig`` and the inference settings) and
``weights.pt`` (a plain ``state_dict`` of tensors), loaded with ``torch.load(weights_only=True)`` so that a
tampered file cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from segft.config import ModelConfig
from segft.data.normalize import NORMALIZATIONS
from segft.models import build_model

FORMAT = "segft-checkpoint-v1"
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"


class CheckpointError(ValueError):
    """A checkpoint folder is missing files, is of an unknown format, or its weights cannot be loaded safely."""


@dataclass(frozen=True)
class InferenceSettings:
    """Preprocessing and windowing the model was trained with; inference must use the same. A description
    written before ``normalization`` existed reads as ``percentile``, the only method then."""

    patch_size: int = 128
    overlap: float = 0.5
    normalization: str = "percentile"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose from {list(NORMALIZATIONS)}")


def save_checkpoint(model: nn.Module, config: ModelConfig, settings: InferenceSettings, directory: Path) -> Path:
    """Write ``model.json`` and ``weights.pt`` into ``directory`` (created if needed) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    description = {"format": FORMAT, "model": asdict(config), "inference": asdict(settings)}
    (directory / CONFIG_FILE).write_text(json.dumps(description, indent=2))
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    return directory


def read_checkpoint_config(directory: Path) -> tuple[ModelConfig, InferenceSettings]:
    """The model and inference settings stored in a checkpoint folder.

    Raises:
        CheckpointError: If ``model.json`` is missing, unparsable, of another format, or has missing or unknown
            fields.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read the model description ({error})") from error
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} model description")
    try:
        model = dict(description["model"])
        model["decoder_channels"] = tuple(model["decoder_channels"])
        return ModelConfig(**model), InferenceSettings(**description["inference"])
    except (KeyError, TypeError, ValueError) as error:  # a missing, unknown or mistyped field
        raise CheckpointError(
            f"{path}: invalid {FORMAT} model description ({type(error).__name__}: {error})"
        ) from error


def load_checkpoint(
    directory: Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelConfig, InferenceSettings]:
    """Rebuild the model from ``model.json`` and load ``weights.pt`` into it (weights only, no code).

    Raises:
        CheckpointError: If a file is missing, the weights are not a plain tensor file, or they do not fit.
    """
    config, settings = read_checkpoint_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model = build_model(config)
        model.load_state_dict(state)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, OSError...: one clear message
        raise CheckpointError(f"{path}: cannot load the weights safely ({type(error).__name__}: {error})") from error
    return model.to(device), config, settings
