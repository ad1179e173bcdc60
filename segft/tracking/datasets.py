"""The parts of a study's data as MLflow dataset inputs: what a run trained, validated and was tested on, each with
a profile (image count, sizes, dtypes, foreground fraction) and a schema (a record: name, image, mask) that MLflow's
dataset drawer shows."""

from __future__ import annotations

import collections
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from segft.tracking.store import once_more


@dataclasses.dataclass(frozen=True)
class DatasetProfile:
    """What MLflow's dataset drawer shows of a part of the data (its profile: one line per field).

    Attributes:
        images: How many images it holds.
        sizes: ``(("<H>x<W>", count), ...)``, most frequent first.
        dtypes: ``(("uint16", count), ...)``: the dtypes the images were read with, most frequent first.
        foreground_fraction: Foreground pixels over all pixels, all images together.
        foreground_fraction_min, foreground_fraction_max: The smallest and largest fraction of one image.
    """

    images: int
    sizes: tuple[tuple[str, int], ...]
    dtypes: tuple[tuple[str, int], ...]
    foreground_fraction: float
    foreground_fraction_min: float
    foreground_fraction_max: float

    @classmethod
    def of(cls, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> DatasetProfile:
        """The profile of (H, W) images and their boolean (H, W) masks; all zero for no images."""
        fractions = [float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0 for mask in masks]
        pixels = sum(mask.size for mask in masks)
        foreground = sum(int(np.count_nonzero(mask)) for mask in masks)
        sizes = collections.Counter("x".join(map(str, image.shape)) for image in images)
        dtypes = collections.Counter(str(image.dtype) for image in images)
        return cls(len(images), tuple(sizes.most_common()), tuple(dtypes.most_common()),
                   round(foreground / pixels, 4) if pixels else 0.0,
                   round(min(fractions, default=0.0), 4), round(max(fractions, default=0.0), 4))

    def as_dict(self) -> dict[str, object]:
        """The profile as MLflow stores it (JSON) and its drawer lists it (``key: value``, underscores as spaces)."""
        return {"images": self.images, "sizes": dict(self.sizes), "dtypes": dict(self.dtypes),
                "foreground_fraction": self.foreground_fraction,
                "foreground_fraction_per_image": f"{self.foreground_fraction_min} to {self.foreground_fraction_max}"}

    def schema(self) -> Schema:
        """One record of the part as MLflow's column schema (the drawer's Schema tab): its name, the image as an
        (H, W) array of the type its dtypes fit (``long`` for integers, ``float``/``double`` for floats) and the
        mask as an (H, W) boolean array."""
        pixel = _pixel_type([np.dtype(name) for name, _ in self.dtypes])
        return Schema([ColSpec(DataType.string, "name"), ColSpec(Array(Array(pixel)), "image"),
                       ColSpec(Array(Array(DataType.boolean)), "mask")])


def _pixel_type(dtypes: list[np.dtype]) -> DataType:
    """MLflow's type that holds every pixel of ``dtypes``."""
    if all(dtype.kind == "b" for dtype in dtypes) and dtypes:
        return DataType.boolean
    if all(dtype.kind in "biu" for dtype in dtypes):
        return DataType.long
    if all(dtype.kind in "biuf" and dtype.itemsize <= 4 for dtype in dtypes):
        return DataType.float
    return DataType.double


class ImageDataset(MetaDataset):
    """MLflow's metadata-only dataset with a profile: MLflow's ``MetaDataset`` logs a schema but no profile."""

    def __init__(self, source: DatasetSource, name: str, digest: str, schema: Schema | None,
                 profile: dict[str, object] | None):
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, object] | None:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        if self._profile is not None:
            config["profile"] = json.dumps(self._profile)
        return config


@dataclasses.dataclass(frozen=True)
class DatasetInput:
    """One part of a study's data as a run's MLflow dataset input.

    Attributes:
        name: ``dataset1-train``, ``dataset2-validation``, ``dataset2-test``... (``schema.input_name``).
        context: What the run used it for (``schema.TRAINING_CONTEXT`` ...).
        source: Where the images came from: a folder, or a description of generated data.
        digest: Digest of its names, pixels and masks.
        images: How many images it holds.
        profile: Its sizes, dtypes and foreground fraction (``DatasetProfile.of``); None logs no profile or schema.
    """

    name: str
    context: str
    source: str
    digest: str
    images: int
    profile: DatasetProfile | None = None

    def as_mlflow(self) -> ImageDataset:
        """MLflow's dataset entity: a local folder source, or a code source for generated data, with the profile
        and schema when known."""
        if Path(self.source).exists():
            with warnings.catch_warnings():  # a local path matches two registered source kinds, equally good
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(Path(self.source).resolve()))
        else:
            source = CodeDatasetSource(tags={"source": self.source})
        profile = self.profile
        return ImageDataset(source, self.name, self.digest, profile.schema() if profile else None,
                            profile.as_dict() if profile else None)


def log_inputs(inputs: list[DatasetInput]) -> None:
    """Log each dataset input on the active run, with its context and image count (the UI's Datasets column)."""
    for item in inputs:
        once_more(lambda: mlflow.log_input(item.as_mlflow(), context=item.context, tags={"images": str(item.images)}))
