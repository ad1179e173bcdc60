"""Tests for segft.data.dataset: layouts, pairing, natural order, validation errors, inverted-mask warning."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from segft.data.dataset import (InvertedMaskWarning, load_image_set, load_study_data, natural_key,
                                require_images)
from segft.data.imageset import ImageSet
from segft.data.readers import DataError, read_masks

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent (fresh clone)")


def image(value: int, shape=(4, 6), dtype=np.uint8) -> np.ndarray:
    return np.full(shape, value, dtype)


def mask(fraction: float = 0.25, shape=(4, 6)) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    flat[: round(fraction * flat.size)] = 255
    return flat.reshape(shape)


def make(root: Path, files: dict[str, np.ndarray | bytes]) -> Path:
    """Write ``files`` ({relative path: array or raw bytes}) under ``root``; 3-D arrays become TIFF stacks."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif path.suffix == ".tif":
            tifffile.imwrite(path, content, photometric="minisblack")
        else:
            assert cv2.imwrite(str(path), content)
    return root


def test_folder_layout_pairs_by_stem_across_formats(tmp_path):
    folder = make(tmp_path / "ds", {
        "images/a.tif": image(1, dtype=np.uint16), "masks/a.png": mask(),
        "images/b.png": image(2), "masks/b.tif": mask(0.5),
        "images/README.txt": b"notes", "images/.DS_Store": b"\0junk", "images/._b.png": b"\0junk",
        "masks/.hidden.tif": b"junk",
    })
    data = load_image_set(folder, "dataset1")
    assert isinstance(data, ImageSet) and data.name == "dataset1" and data.source == str(folder)
    assert data.names == ("a", "b")
    assert data.images[0].dtype == np.uint16 and int(data.images[1][0, 0]) == 2
    assert all(m.dtype == bool for m in data.masks)
    assert [float(m.mean()) for m in data.masks] == [0.25, 0.5]


@pytest.mark.parametrize("stems, expected", [
    (["img10", "img2", "img1"], ["img1", "img2", "img10"]),
    (["b2", "a10", "B1", "a9"], ["a9", "a10", "B1", "b2"]),
    (["10", "9", "100", "01"], ["01", "9", "10", "100"]),
    (["s1-p10", "s1-p9", "s10", "s2"], ["s1-p9", "s1-p10", "s2", "s10"]),
])
def test_images_are_in_natural_order(tmp_path, stems, expected):
    files = {}
    for i, stem in enumerate(stems):
        files[f"images/{stem}.png"], files[f"masks/{stem}.png"] = image(i), mask()
    data = load_image_set(make(tmp_path / "ds", files), "d")
    assert list(data.names) == expected == sorted(stems, key=natural_key)
    assert [stems[int(im[0, 0])] for im in data.images] == expected  # each image travels with its name


def test_stack_in_folder_pairs_page_by_page(tmp_path):
    stack = np.stack([image(10), image(20)])
    masks = np.stack([mask(0.25), mask(0.5)])
    data = load_image_set(make(tmp_path / "ds", {
        "images/s.tif": stack, "masks/s.tif": masks, "images/t.png": image(30), "masks/t.png": mask(),
    }), "d")
    assert data.names == ("s-p001", "s-p002", "t")
    assert [int(im[0, 0]) for im in data.images] == [10, 20, 30]
    assert [float(m.mean()) for m in data.masks] == [0.25, 0.5, 0.25]


@pytest.mark.parametrize("n_pages, names", [(1, ("p001",)), (3, ("p001", "p002", "p003"))])
def test_images_tif_and_masks_tif_layout(tmp_path, n_pages, names):
    images = np.stack([image(i) for i in range(n_pages)])
    masks = np.stack([mask((i + 1) / 8) for i in range(n_pages)])
    folder = make(tmp_path / "ds", {"images.tif": images, "masks.tif": masks, "notes.txt": b"x"})
    data = load_image_set(folder, "d")
    assert data.names == names
    assert [int(im[0, 0]) for im in data.images] == list(range(n_pages))
    assert np.array_equal(np.stack(data.masks), masks > 0)


def test_loading_leaves_the_files_untouched(tmp_path):
    folder = make(tmp_path / "ds", {"images/a.tif": image(1), "masks/a.tif": mask(0.9)})
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    with pytest.warns(InvertedMaskWarning):
        load_image_set(folder, "d")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}
    assert after == before


ERROR_CASES = [  # id, files written under ds/ (None: no ds/ folder at all), regex the message must match
    ("no dataset folder", None, r"ds: dataset folder not found"),
    ("no images folder", {"masks/a.png": mask()}, r"ds/images: folder not found"),
    ("no masks folder", {"images/a.png": image(1)}, r"ds/masks: folder not found"),
    ("no image file", {"images/README.txt": b"x", "masks/a.png": mask()}, r"ds/images: holds no image file"),
    ("no mask file", {"images/a.png": image(1), "masks/.a.png": b"x"}, r"ds/masks: holds no image file"),
    ("unreadable image", {"images/a.tif": b"garbage", "masks/a.png": mask()},
     r"images/a\.tif: unreadable or corrupt"),
    ("unreadable mask", {"images/a.png": image(1), "masks/a.tif": b"garbage"},
     r"masks/a\.tif: unreadable or corrupt"),
    ("size mismatch", {"images/a.png": image(1, (4, 6)), "masks/a.png": mask(shape=(4, 5))},
     r"image .*images/a\.png is 4x6 but mask .*masks/a\.png is 4x5"),
    ("size mismatch in stack", {"images/s.tif": np.stack([image(1)] * 2), "masks/s.tif": np.stack([mask()] * 2)[
        :, :, :5]}, r"images/s\.tif page 1 is 4x6 but mask .*masks/s\.tif page 1 is 4x5"),
    ("unpaired", {"images/a.png": image(1), "images/b.png": image(1), "images/c2.png": image(1),
                  "masks/a.png": mask(), "masks/x.png": mask()},
     r"ds: unpaired files; images without a mask: b, c2; masks without an image: x"),
    ("page count", {"images/s.tif": np.stack([image(1)] * 5), "masks/s.tif": np.stack([mask()] * 2)},
     r"images/s\.tif has 5 pages but its mask .*masks/s\.tif has 2"),
    ("empty mask", {"images/a.png": image(1), "masks/a.png": mask(0.0)}, r"mask .*masks/a\.png has no foreground"),
    ("empty stack page", {"images.tif": np.stack([image(1)] * 2), "masks.tif": np.stack([mask(), mask(0.0)])},
     r"mask .*ds/masks\.tif page 2 has no foreground pixel"),
    ("duplicate image stem", {"images/a.png": image(1), "images/a.tif": image(1), "masks/a.png": mask()},
     r"ds/images: duplicate stem 'a' \(a\.png and a\.tif\)"),
    ("duplicate mask stem", {"images/a.png": image(1), "masks/a.png": mask(), "masks/a.tiff": b"x"},
     r"ds/masks: duplicate stem 'a' \(a\.png and a\.tiff\)"),
    ("images.tif without masks.tif", {"images.tif": np.stack([image(1)] * 2)},
     r"ds: no masks\.tif next to images\.tif"),
    ("masks.tif without images.tif", {"masks.tif": np.stack([mask()] * 2)}, r"ds: no images\.tif next to masks\.tif"),
    ("stack page count", {"images.tif": np.stack([image(1)] * 2), "masks.tif": mask()},
     r"images\.tif has 2 pages but its mask .*masks\.tif has 1"),
]


@pytest.mark.parametrize("files, message", [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES])
def test_bad_datasets_raise_data_error_naming_the_file(tmp_path, files, message):
    folder = tmp_path / "ds"
    if files is not None:
        make(folder, files)
    with pytest.raises(DataError, match=message) as info:
        load_image_set(folder, "d")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("masks, message", [
    ({"masks/07.tif": mask(0.75)}, r"mask .*masks/07\.tif is 75\.0 % foreground: is it inverted\? "
                                   r"segft treats values > 0 as foreground"),
    ({"masks/07.tif": np.stack([mask(0.25), mask(0.625), mask(0.875)])},
     r"masks/07\.tif is 87\.5 % foreground \(2 of 3 pages over 50 %\): is it inverted\?"),
])
def test_mostly_foreground_mask_warns_but_loads(tmp_path, masks, message):
    images = {"images/07.tif": np.stack([image(1)] * 3) if masks["masks/07.tif"].ndim == 3 else image(1)}
    with pytest.warns(InvertedMaskWarning, match=message):
        data = load_image_set(make(tmp_path / "ds", {**images, **masks}), "d")
    assert len(data) == len(read_masks(tmp_path / "ds" / "masks" / "07.tif"))


def test_half_foreground_mask_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_set(make(tmp_path / "ds", {"images/a.png": image(1), "masks/a.png": mask(0.5)}), "d")


def small_dataset(index: int) -> dict[str, np.ndarray]:
    return {f"images/{index}.png": image(index), f"masks/{index}.png": mask()}


def test_load_study_data_reads_both_datasets(tmp_path):
    make(tmp_path / "root", {f"dataset1/{k}": v for k, v in {**small_dataset(1), **small_dataset(2)}.items()})
    make(tmp_path / "root", {f"dataset2/{k}": v for k, v in small_dataset(3).items()})
    study = load_study_data(tmp_path / "root")
    assert (study.dataset1.name, study.dataset1.names) == ("dataset1", ("1", "2"))
    assert (study.dataset2.name, study.dataset2.names) == ("dataset2", ("3",))
    assert study.dataset2.source == str(tmp_path / "root" / "dataset2")


@pytest.mark.parametrize("folders, message", [
    ((), r"root: data folder not found"),
    (("dataset2",), r"root/dataset1: folder not found"),
    (("dataset1",), r"root/dataset2: folder not found"),
])
def test_load_study_data_names_the_missing_folder(tmp_path, folders, message):
    for name in folders:
        make(tmp_path / "root" / name, small_dataset(1))
    with pytest.raises(DataError, match=message):
        load_study_data(tmp_path / "root")


@pytest.mark.parametrize("available, needed, raises", [(12, 15, True), (12, 12, False), (12, 0, False), (0, 1, True)])
def test_require_images(available, needed, raises):
    data = ImageSet("dataset2", tuple(map(str, range(available))), (image(0),) * available, (mask() > 0,) * available,
                    "data/dataset2")
    what = f"fine-tuning with n_images={needed}"
    if raises:
        expected = rf"dataset2 has {available} images but {what} needs {needed} \(data/dataset2\)"
        with pytest.raises(DataError, match=expected):
            require_images(data, needed, what)
    else:
        require_images(data, needed, what)


@needs_shared
def test_real_filaments_dataset_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvertedMaskWarning)
        data = load_image_set(SHARED_DATA / "filaments", "filaments")
    assert data.names == tuple(f"{i:02d}" for i in range(1, 15))
    assert all(im.shape == (250, 1024) and im.dtype == np.uint8 for im in data.images)
    assert all(m.shape == (250, 1024) and 0 < m.mean() < 0.5 for m in data.masks)


@needs_shared
def test_real_inverted_nucleus_masks_warn(tmp_path):
    pages = read_masks(SHARED_DATA / "microtube-masks" / "nucleus_masks.tif")
    assert len(pages) == 31 and all(p.shape == (558, 136) and p.mean() > 0.5 for p in pages)
    make(tmp_path / "ds", {"images.tif": np.zeros((31, 558, 136), np.uint8), "masks.tif": np.stack(pages)})
    with pytest.warns(InvertedMaskWarning, match=r"masks\.tif is 9\d\.\d % foreground \(31 of 31 pages"):
        load_image_set(tmp_path / "ds", "nucleus")
    make(tmp_path / "fixed", {"images.tif": np.zeros((31, 558, 136), np.uint8), "masks.tif": ~np.stack(pages)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvertedMaskWarning)
        assert len(load_image_set(tmp_path / "fixed", "nucleus")) == 31  # the inverted-back masks load silently
