"""The parts of a study's data as MLflow dataset inputs: what a run trained, validated and was tested on."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import mlflow
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from segft.tracking.store import once_more


@dataclasses.dataclass(frozen=True)
class DatasetInput:
    """One part of a study's data as a run's MLflow dataset input.

    Attributes:
        name: ``dataset1-train``, ``dataset2-validation``, ``dataset2-test``... (``schema.input_name``).
        context: What the run used it for (``schema.TRAINING_CONTEXT`` ...).
        source: Where the images came from: a folder, or a description of generated data.
        digest: Digest of its names, pixels and masks.
        images: How many images it holds.
    """

    name: str
    context: str
    source: str
    digest: str
    images: int

    def as_mlflow(self) -> MetaDataset:
        """MLflow's dataset entity: a local folder source, or a code source for generated data."""
        if Path(self.source).exists():
            with warnings.catch_warnings():  # a local path matches two registered source kinds, equally good
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str(Path(self.source).resolve()))
        else:
            source = CodeDatasetSource(tags={"source": self.source})
        return MetaDataset(source, name=self.name, digest=self.digest)


def log_inputs(inputs: list[DatasetInput]) -> None:
    """Log each dataset input on the active run, with its context and image count (the UI's Datasets column)."""
    for item in inputs:
        once_more(lambda: mlflow.log_input(item.as_mlflow(), context=item.context, tags={"images": str(item.images)}))
