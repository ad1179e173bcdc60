"""Tests for segft.data.synthetic: determinism, the mimicked mask statistics, the domain shift, writing to disk."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segft.data.imageset import ImageSet, StudyData
from segft.data.normalize import normalize_image
from segft.data.synthetic import make_microtube_study, write_image_set, write_study

DATASETS = ["dataset1", "dataset2"]


@pytest.fixture(scope="module")
def study() -> StudyData:
    return make_microtube_study(seed=0)


def _frames(study: StudyData, dataset: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    image_set = getattr(study, dataset)
    return list(zip(image_set.names, image_set.images, image_set.masks))


def test_same_seed_gives_identical_data():
    first, second = make_microtube_study(seed=3, n_images=4), make_microtube_study(seed=3, n_images=4)
    for a, b in ((first.dataset1, second.dataset1), (first.dataset2, second.dataset2)):
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
        assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
    assert first.digest() == second.digest()


def test_different_seed_gives_different_data():
    assert make_microtube_study(seed=3, n_images=2).digest() != make_microtube_study(seed=4, n_images=2).digest()


def test_images_do_not_depend_on_how_many_are_asked_for():
    few, more = make_microtube_study(seed=1, n_images=2), make_microtube_study(seed=1, n_images=5)
    assert few.dataset2.digest() == more.dataset2.subset([0, 1]).digest()


def test_datasets_differ(study):
    assert not np.array_equal(study.dataset1.masks[0], study.dataset2.masks[0])


@pytest.mark.parametrize("dataset", DATASETS)
def test_shapes_dtypes_and_names(study, dataset):
    image_set = getattr(study, dataset)
    assert image_set.name == dataset
    assert image_set.names == tuple(f"{i:03d}" for i in range(1, 32))
    assert image_set.source == "synthetic:microtube-v2:seed=0"
    for image, mask in zip(image_set.images, image_set.masks):
        assert image.shape == mask.shape == (558, 136)
        assert image.dtype == np.uint8 and mask.dtype == bool


@pytest.mark.parametrize("dataset", DATASETS)
def test_foreground_fraction_matches_real_masks(study, dataset):
    fractions = {name: mask.mean() for name, _, mask in _frames(study, dataset)}
    outside = {name: f for name, f in fractions.items() if not 0.12 <= f <= 0.21}
    assert not outside, f"foreground fraction outside 12-21 %: {outside}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_cell_width_and_length_match_real_masks(study, dataset):
    for name, _, mask in _frames(study, dataset):
        rows = np.flatnonzero(mask.any(axis=1))
        width, length = np.median(mask.sum(axis=1)[rows]), rows[-1] - rows[0] + 1
        assert 45 <= width <= 55, f"{dataset}/{name}: median row width {width}"
        assert 200 <= length <= 350, f"{dataset}/{name}: length {length}"
        assert rows[0] > 0 and rows[-1] < mask.shape[0] - 1, f"{dataset}/{name}: cell touches the border"


@pytest.mark.parametrize("dataset", DATASETS)
def test_one_connected_cell_per_mask(study, dataset):
    for name, _, mask in _frames(study, dataset):
        count, _ = cv2.connectedComponents(mask.astype(np.uint8))
        assert count - 1 == 1, f"{dataset}/{name}: {count - 1} components"


def test_dataset1_cell_is_brighter_than_background(study):
    for name, image, mask in _frames(study, "dataset1"):
        assert image[mask].mean() > image[~mask].mean() + 50, f"dataset1/{name}"


def test_dataset2_cell_is_faint_on_a_grey_background(study):
    """The domain shift: in Dataset 2 the cell is only a little brighter than a grey background, so after
    per-image normalization the background is mid-grey, where in Dataset 1 it is near 0."""
    for dataset, low, high in (("dataset2", 0.3, 0.9), ("dataset1", -0.1, 0.1)):
        for name, image, mask in _frames(study, dataset):
            normalized = normalize_image(image)
            assert low < np.median(normalized[~mask]) < high, f"{dataset}/{name}: background level"
    for name, image, mask in _frames(study, "dataset2"):
        contrast = np.median(image[mask]) - np.median(image[~mask])
        assert 0 < contrast < 50, f"dataset2/{name}: cell contrast {contrast:.1f}"


@pytest.mark.parametrize(("kwargs", "message"), [({"seed": -1}, "seed"), ({"n_images": 0}, "n_images")])
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_microtube_study(**kwargs)


def test_write_study_round_trip(tmp_path):
    study = make_microtube_study(seed=2, n_images=3)
    out = write_study(study, tmp_path / "synthetic")
    assert "dataset2" in (out / "README.txt").read_text()
    for image_set in (study.dataset1, study.dataset2):
        for name, image, mask in zip(image_set.names, image_set.images, image_set.masks):
            read_image = cv2.imread(str(out / image_set.name / "images" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            read_mask = cv2.imread(str(out / image_set.name / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(read_image, image)
            assert np.array_equal(read_mask, mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("writer", ["study", "image_set"])
def test_write_refuses_non_empty_folder(tmp_path, writer):
    (tmp_path / "keep.txt").write_text("existing")
    study = make_microtube_study(n_images=1)
    with pytest.raises(ValueError, match="non-empty"):
        if writer == "study":
            write_study(study, tmp_path)
        else:
            write_image_set(study.dataset1, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_write_image_set_rejects_float_images(tmp_path):
    image_set = ImageSet("x", ("001",), (np.zeros((4, 4), np.float32),), (np.zeros((4, 4), bool),), "test")
    with pytest.raises(ValueError, match="dtype"):
        write_image_set(image_set, tmp_path / "out")
