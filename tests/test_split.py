"""Tests for segft.data.split: the split by position into base training, fine-tuning pool and test sets."""

from __future__ import annotations

import pytest

from segft.config import FinetuneConfig, SplitConfig
from segft.data.imageset import ImageSet, StudyData
from segft.data.readers import DataError
from segft.data.split import StudySplit, split_study
from segft.data.synthetic import make_microtube_study


def names(first: int, last: int) -> list[str]:
    """'001'..'031' style names of images ``first``..``last`` (1-based, inclusive)."""
    return [f"{i:03d}" for i in range(first, last + 1)]


@pytest.fixture(scope="module")
def study() -> StudyData:
    return make_microtube_study()  # 31 + 31 images named 001..031


@pytest.fixture(scope="module")
def split(study) -> StudySplit:
    return split_study(study, SplitConfig())


def test_the_study_data_is_what_the_split_expects(study):
    assert list(study.dataset1.names) == list(study.dataset2.names) == names(1, 31)


def test_default_split_names(split):
    assert split.file_names() == {
        "dataset1_train": names(1, 25),
        "dataset2_pool": names(1, 20),
        "dataset1_test": names(26, 31),  # 6 images
        "dataset2_test": names(21, 31),  # 11 images
    }
    assert (len(split.base_train), len(split.test_dataset1)) == (25, 6)
    assert (len(split.finetune_pool), len(split.test_dataset2)) == (20, 11)


def test_each_part_comes_from_its_dataset(study, split):
    assert split.base_train.name == split.test_dataset1.name == "dataset1"
    assert split.finetune_pool.name == split.test_dataset2.name == "dataset2"
    # the arrays are the study's, not copies of the other dataset
    assert split.base_train.images[0] is study.dataset1.images[0]
    assert split.test_dataset1.images[0] is study.dataset1.images[25]
    assert split.finetune_pool.images[0] is study.dataset2.images[0]
    assert split.test_dataset2.images[0] is study.dataset2.images[20]
    assert split.test_dataset2.masks[-1] is study.dataset2.masks[30]
    assert split.test_sets() == (split.test_dataset1, split.test_dataset2)


def test_test_sets_never_overlap_training(split):
    assert not set(split.base_train.names) & set(split.test_dataset1.names)
    assert not set(split.finetune_pool.names) & set(split.test_dataset2.names)
    for n_images in (1, 15, 20):
        assert not set(split.finetune_subset(n_images).names) & set(split.test_dataset2.names)
    # and no image array is shared either
    train_ids = {id(image) for image in split.base_train.images + split.finetune_pool.images}
    test_ids = {id(image) for image in split.test_dataset1.images + split.test_dataset2.images}
    assert not train_ids & test_ids


@pytest.mark.parametrize("n_images", [1, 5, 15, 20])
def test_finetune_subset_is_the_first_n_images_of_the_pool(split, n_images):
    subset = split.finetune_subset(n_images)
    assert list(subset.names) == names(1, n_images)
    assert subset.name == "dataset2"
    assert all(a is b for a, b in zip(subset.images, split.finetune_pool.images))


def test_finetune_subsets_are_nested(split):
    """Fine-tuning with more images adds images; it never swaps the smaller subset's images."""
    assert split.finetune_subset(15).names[:5] == split.finetune_subset(5).names


@pytest.mark.parametrize("n_images", [21, 31, 100])
def test_finetune_subset_larger_than_the_pool_raises(split, n_images):
    with pytest.raises(DataError, match=rf"dataset2 has 20 images but fine-tuning with n_images={n_images} .* "
                                        rf"needs {n_images}"):
        split.finetune_subset(n_images)


@pytest.mark.parametrize("n_images", [0, -3])
def test_fewer_than_one_image_is_refused_by_the_config(n_images):
    with pytest.raises(ValueError, match=rf"n_images must be >= 1, got {n_images}"):
        FinetuneConfig(n_images=n_images)


def small_study(study: StudyData, n1: int, n2: int) -> StudyData:
    return StudyData(study.dataset1.subset(range(n1)), study.dataset2.subset(range(n2)))


TOO_FEW_CASES = [  # images in dataset 1, in dataset 2, expected message
    (25, 31, r"dataset1 has 25 images but base training on images 1-25 plus a test image needs 26"),
    (3, 31, r"dataset1 has 3 images but base training .* needs 26"),
    (31, 20, r"dataset2 has 20 images but a fine-tuning pool of images 1-20 plus a test image needs 21"),
    (31, 1, r"dataset2 has 1 images but .* needs 21"),
]


@pytest.mark.parametrize("n1, n2, message", TOO_FEW_CASES)
def test_too_few_images_for_the_split_raise_data_error(study, n1, n2, message):
    with pytest.raises(DataError, match=message) as info:
        split_study(small_study(study, n1, n2), SplitConfig())
    assert "synthetic:" in str(info.value)  # names the source of the data


def test_smallest_study_the_default_split_accepts(study):
    split = split_study(small_study(study, 26, 21), SplitConfig())
    assert list(split.test_dataset1.names) == ["026"] and list(split.test_dataset2.names) == ["021"]


SMALL_SPLIT_CASES = [  # n1, n2, config, dataset1 train, dataset1 test, dataset2 pool, dataset2 test
    (4, 5, SplitConfig(3, 2), names(1, 3), names(4, 4), names(1, 2), names(3, 5)),
    (6, 3, SplitConfig(1, 2), names(1, 1), names(2, 6), names(1, 2), names(3, 3)),
]


@pytest.mark.parametrize("n1, n2, config, train, test1, pool, test2", SMALL_SPLIT_CASES)
def test_split_follows_the_config(study, n1, n2, config, train, test1, pool, test2):
    split = split_study(small_study(study, n1, n2), config)
    assert split.file_names() == {
        "dataset1_train": train, "dataset2_pool": pool, "dataset1_test": test1, "dataset2_test": test2,
    }


@pytest.mark.parametrize("config", [SplitConfig(0, 20), SplitConfig(25, 0), SplitConfig(-1, 5)])
def test_split_config_needs_positive_counts(study, config):
    with pytest.raises(ValueError, match="dataset1_train_images and dataset2_pool_images must be >= 1"):
        split_study(study, config)


def test_split_is_by_position_not_by_name(study):
    """The split takes the images in the order the dataset holds them (the loader's natural sort)."""
    reversed_d1: ImageSet = study.dataset1.subset(range(30, -1, -1))  # 031, 030, ..., 001
    split = split_study(StudyData(reversed_d1, study.dataset2), SplitConfig())
    assert list(split.base_train.names) == names(7, 31)[::-1]
    assert list(split.test_dataset1.names) == names(1, 6)[::-1]
