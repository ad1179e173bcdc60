"""Which data a study uses, and how it is split into base training, fine-tuning pool and test sets.

The split follows the original protocol by position in each dataset's sorted file list:
Dataset 1 images 1-25 train the base model and 26-end are its test set; Dataset 2 images 1-20 are the
fine-tuning pool (fine-tuning with ``n`` images takes the first ``n``) and 21-end are its test set.
Test images are never used for training, model selection or early stopping.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

from segft import schema
from segft.config import SplitConfig
from segft.data.dataset import load_study_data, require_images
from segft.data.imageset import ImageSet, StudyData
from segft.data.synthetic import make_microtube_study


def load_data(data_dir: str) -> StudyData:
    """The study's data: ``data_dir/dataset1`` and ``data_dir/dataset2``, or the built-in synthetic microtube
    data when ``data_dir`` is empty. Validates every file (see ``segft.data.dataset``)."""
    return load_study_data(data_dir) if data_dir else make_microtube_study()


@dataclass(frozen=True)
class StudySplit:
    """The four parts of a study's data."""

    base_train: ImageSet
    finetune_pool: ImageSet
    test_dataset1: ImageSet
    test_dataset2: ImageSet

    def check_sizes(self, sizes: Iterable[int], left_for_validation: int = 0) -> None:
        """The one check of fine-tuning sizes against the pool, which every route takes (``segft.runs.prepare``
        for ``finetune``, ``study`` and ``tune``; ``finetune_subset``): the pool must hold each size, plus
        ``left_for_validation`` images a run does not train on (tuning validates on them). That a size is at
        least 1 is the settings' own rule (``FinetuneConfig``, ``StudyConfig``, ``TuneConfig``).

        Raises:
            DataError: If the pool holds too few images, naming the size and the pool.
        """
        for n in sizes:
            validation = f" and {left_for_validation} to validate on" if left_for_validation else ""
            require_images(self.finetune_pool, n + left_for_validation,
                           f"fine-tuning with n_images={n}{validation} (pool of the first {len(self.finetune_pool)} "
                           "images)")

    def finetune_subset(self, n_images: int) -> ImageSet:
        """The first ``n_images`` of the fine-tuning pool.

        Raises:
            DataError: If the pool holds fewer than ``n_images`` (``check_sizes``).
        """
        self.check_sizes([n_images])
        return self.finetune_pool.subset(range(n_images))

    def joint_train(self, dataset2_images: ImageSet) -> ImageSet:
        """The ``joint`` arm's training set: Dataset 1's training images, then ``dataset2_images`` (names
        prefixed with their dataset, so that the logged split says which is which)."""
        return dataclasses.replace(
            dataset2_images,
            name=schema.JOINT_ARM,
            names=tuple(f"{schema.DATASET1}/{n}" for n in self.base_train.names)
            + tuple(f"{schema.DATASET2}/{n}" for n in dataset2_images.names),
            images=self.base_train.images + dataset2_images.images,
            masks=self.base_train.masks + dataset2_images.masks,
        )

    def test_sets(self) -> tuple[ImageSet, ImageSet]:
        return self.test_dataset1, self.test_dataset2

    def test_images(self) -> dict[tuple[str, str], tuple]:
        """``(dataset, image name) -> (image, mask)`` of every test image (for overlays)."""
        return {(s.name, n): (i, m) for s in self.test_sets() for n, i, m in zip(s.names, s.images, s.masks)}

    def file_names(self) -> dict[str, list[str]]:
        """The exact image names of each part, for logging."""
        return {
            "dataset1_train": list(self.base_train.names),
            "dataset2_pool": list(self.finetune_pool.names),
            "dataset1_test": list(self.test_dataset1.names),
            "dataset2_test": list(self.test_dataset2.names),
        }


def split_study(study: StudyData, config: SplitConfig) -> StudySplit:
    """Split by position; each dataset must keep at least one test image.

    Raises:
        DataError: If a dataset has too few images for its part of the split.
    """
    n_train, n_pool = config.dataset1_train_images, config.dataset2_pool_images
    if n_train < 1 or n_pool < 1:
        raise ValueError(f"dataset1_train_images and dataset2_pool_images must be >= 1, got {n_train}, {n_pool}")
    require_images(study.dataset1, n_train + 1, f"base training on images 1-{n_train} plus a test image")
    require_images(study.dataset2, n_pool + 1, f"a fine-tuning pool of images 1-{n_pool} plus a test image")
    d1, d2 = study.dataset1, study.dataset2
    return StudySplit(
        base_train=d1.subset(range(n_train)),
        finetune_pool=d2.subset(range(n_pool)),
        test_dataset1=d1.subset(range(n_train, len(d1))),
        test_dataset2=d2.subset(range(n_pool, len(d2))),
    )
