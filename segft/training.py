"""The training loop and the evaluation of a model on a test set.

Reads as nnU-Net's ``run_training``: patches are cut once and kept on the device, then each epoch is one
``train_epoch`` (its steps run as ``segft.train_step`` says) followed by a callback that logs it; evaluation
segments whole test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from segft.config import TrainConfig
from segft.data.imageset import ImageSet
from segft.data.normalize import normalize_image
from segft.data.patches import extract_patches
from segft.inference import resolve_autocast
from segft.losses import BRANCHES, DynamicLoss
from segft.metrics import Counts, confusion_counts
from segft.quality import prediction_digest
from segft.train_step import StepFn, make_optimizer, make_train_step, resolve_step_mode


@dataclass(frozen=True)
class Patches:
    """Training patches of an image set, on one device.

    Attributes:
        images: (N, 1, p, p) float32 normalized image patches.
        masks: (N, 1, p, p) float32 masks in {0, 1}.
    """

    images: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def make_patches(image_set: ImageSet, patch_size: int, device: torch.device | str = "cpu",
                 normalization: str = "percentile") -> Patches:
    """Normalize each image (``normalize_image`` with ``normalization``) and cut it and its mask on a
    non-overlapping grid covering the whole image.

    Every patch is kept, background-only ones included (the dynamic loss trains those with BCE).
    """
    images, masks = [], []
    for image, mask in zip(image_set.images, image_set.masks):
        images.append(extract_patches(normalize_image(image, normalization), patch_size, patch_size)[0])
        masks.append(extract_patches(mask.astype(np.float32), patch_size, patch_size)[0])
    return Patches(
        images=torch.from_numpy(np.concatenate(images)[:, None]).to(device),
        masks=torch.from_numpy(np.concatenate(masks)[:, None]).to(device),
    )


@dataclass(frozen=True)
class EpochLog:
    """What one epoch did: mean training loss and how many patches took each dynamic-loss branch."""

    epoch: int
    loss: float
    branch_counts: dict[str, int]


class NonFiniteLossError(ValueError):
    """Training produced a NaN or infinite loss; the message names the epoch and step where it first did."""


def train_epoch(
    step: StepFn, patches: Patches, batch_size: int, generator: torch.Generator, epoch: int = 0
) -> tuple[float, dict[str, int]]:
    """One pass over the patches in a random order; returns the mean loss and the branch counts.

    Batches are gathered from the device-resident patches on the device; each step's loss and the branch counts
    are kept there and read once at the end of the epoch (no per-step host sync, no per-step disk or host I/O).

    Raises:
        NonFiniteLossError: If any step's loss was NaN or infinite (checked at the end of the epoch, since
            checking every step would sync with the device); the message names the first such step.
    """
    device = patches.images.device
    order = torch.randperm(len(patches), generator=generator).to(device)
    starts = range(0, len(order), batch_size)
    losses = torch.zeros(len(starts), device=device)
    batch_sizes = torch.tensor([min(batch_size, len(order) - start) for start in starts], device=device)
    counts = torch.zeros(len(BRANCHES), dtype=torch.long, device=device)
    branch_ids = torch.arange(len(BRANCHES), device=device)
    for number, start in enumerate(starts):
        index = order[start : start + batch_size]
        loss, branch = step(patches.images[index], patches.masks[index])
        losses[number] = loss
        counts += (branch[:, None] == branch_ids).sum(dim=0)  # not bincount: it syncs with the host on CUDA
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise NonFiniteLossError(
            f"the training loss became {losses[first].item():g} at epoch {epoch + 1}, step {first + 1} of "
            f"{len(starts)}; stopped, no model registered (lower --lr, or check the data)")
    return (losses * batch_sizes).sum().item() / len(patches), dict(zip(BRANCHES, counts.tolist()))


def train(
    model: nn.Module,
    patches: Patches,
    config: TrainConfig,
    on_epoch: Callable[[EpochLog], None] = lambda log: None,
    description: str = "train",
    mix_with_start: float = 1.0,
) -> list[EpochLog]:
    """Train ``model`` in place with Adam and the dynamic loss for ``config.epochs`` epochs.

    Args:
        model: Already on the patches' device; put in channels-last layout when ``config.channels_last``.
        patches: Training patches (``make_patches``).
        config: Epochs, batch size, learning rate, loss settings, seed (patch order), step mode and precision.
        on_epoch: Called after every epoch, for example to log to MLflow.
        description: Label of the progress bar.
        mix_with_start: Below 1, after the last epoch (before its ``on_epoch``) every floating weight and
            normalization statistic becomes ``mix_with_start`` x its trained value + the rest x its value when
            training began (WiSE-FT; ``TrainConfig.finetune_mix`` for training from a base model).

    Returns:
        One ``EpochLog`` per epoch.

    Raises:
        ValueError: If there are no patches, the batch size or epochs are not positive, or the step mode does
            not fit the device.
        NonFiniteLossError: At the end of the first epoch with a NaN or infinite loss.
    """
    if len(patches) == 0:
        raise ValueError("no training patches")
    if config.batch_size < 1 or config.epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {config.batch_size} and {config.epochs}")
    step = prepare_train_step(model, config, patches.images.device)
    start = {name: value.detach().clone() for name, value in model.state_dict().items()} if mix_with_start < 1 else None
    generator = torch.Generator().manual_seed(config.seed)
    logs = []
    progress = tqdm(range(config.epochs), desc=description, unit="epoch")
    for epoch in progress:
        model.train()  # on_epoch may have evaluated the model
        loss, counts = train_epoch(step, patches, config.batch_size, generator, epoch)
        if start is not None and epoch == config.epochs - 1:
            mix_weights(model, start, mix_with_start)
        log = EpochLog(epoch=epoch, loss=loss, branch_counts=counts)
        progress.set_postfix(loss=f"{loss:.4f}")
        on_epoch(log)
        logs.append(log)
    return logs


@torch.no_grad()
def mix_weights(model: nn.Module, start: dict[str, torch.Tensor], mix: float) -> None:
    """In place: every floating tensor of ``model``'s state becomes ``mix`` x itself + (1 - ``mix``) x its value
    in ``start`` (the same tensors stay, so a captured CUDA graph still sees them); counters keep their value."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            tensor.lerp_(start[name].to(tensor.device, tensor.dtype), 1 - mix)


def prepare_train_step(model: nn.Module, config: TrainConfig, device: torch.device) -> StepFn:
    """The optimizer step ``train`` runs for ``config`` on ``device``: the model put in channels-last layout when
    asked, Adam over its trainable weights, the step mode and autocast resolved for the device.

    Raises:
        ValueError: If the step mode does not fit the device.
    """
    mode = resolve_step_mode(config.step, device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), config.lr, device, mode)
    return make_train_step(model, DynamicLoss(config.loss).to(device), optimizer, mode, config.batch_size,
                           autocast=resolve_autocast(config.autocast, device))


@dataclass(frozen=True)
class ImageResult:
    """One test image's prediction and its counts against the ground truth."""

    dataset: str
    name: str
    counts: Counts
    prediction: np.ndarray

    @property
    def dice(self) -> float:
        return self.counts.dice


def evaluate(segmenter: Callable[[np.ndarray], np.ndarray], image_set: ImageSet) -> list[ImageResult]:
    """Segment every image of ``image_set`` whole (``segmenter(image) -> mask``, e.g. ``SlidingWindowSegmenter``)
    and score it against its mask."""
    results = []
    for name, image, mask in tqdm(
        list(zip(image_set.names, image_set.images, image_set.masks)), desc=f"evaluate {image_set.name}", unit="image"
    ):
        prediction = segmenter(image)
        results.append(ImageResult(image_set.name, name, confusion_counts(prediction, mask), prediction))
    return results


def evaluation_table(results: list[ImageResult]) -> pd.DataFrame:
    """One row per scored image: dataset, image, dice, tp, fp, fn and the predicted mask's digest
    (``segft.quality.prediction_digest``)."""
    return pd.DataFrame(
        [
            {"dataset": r.dataset, "image": r.name, "dice": r.dice, "tp": r.counts.tp, "fp": r.counts.fp,
             "fn": r.counts.fn, "prediction_digest": prediction_digest(r.prediction)}
            for r in results
        ]
    )


def mean_dice(results: list[ImageResult]) -> float:
    """Mean of the per-image Dice scores (the study's per-dataset number)."""
    return float(np.mean([r.dice for r in results]))
