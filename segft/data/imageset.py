"""In-memory containers for a dataset of images with masks, and the digest that identifies them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ImageSet:
    """Images of one dataset with their masks, in sorted order.

    Attributes:
        name: Dataset name, for example ``dataset1``.
        names: One name per image (the file stem; ``stem-p003`` for page 3 of a stack), in sorted order.
        images: 2-D single-channel arrays (H, W) with the dtype they were read with (uint8, uint16, float32...).
        masks: 2-D boolean arrays (H, W), True for foreground, one per image and of the same shape.
        source: Where the images came from (a folder path, or ``synthetic:...`` for built-in data).
    """

    name: str
    names: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (0-based), in that order."""
        return ImageSet(
            name=self.name,
            names=tuple(self.names[i] for i in indices),
            images=tuple(self.images[i] for i in indices),
            masks=tuple(self.masks[i] for i in indices),
            source=self.source,
        )

    def digest(self) -> str:
        """SHA-256 over names, pixel values and masks: identical data gives an identical digest."""
        sha = hashlib.sha256()
        for name, image, mask in zip(self.names, self.images, self.masks):
            sha.update(name.encode())
            sha.update(str(image.dtype).encode() + str(image.shape).encode())
            sha.update(np.ascontiguousarray(image).tobytes())
            sha.update(np.packbits(mask).tobytes())
        return sha.hexdigest()


@dataclass(frozen=True)
class StudyData:
    """The two datasets of a study: Dataset 1 (trains the base model) and Dataset 2 (the new domain)."""

    dataset1: ImageSet
    dataset2: ImageSet

    def digest(self) -> str:
        """A short identifier of both datasets' content, logged with every run and model version."""
        sha = hashlib.sha256((self.dataset1.digest() + self.dataset2.digest()).encode())
        return sha.hexdigest()[:16]
