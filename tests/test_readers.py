"""Tests for segft.data.readers: formats, stacks, dtypes, the single-channel rule, the mask rule, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from segft.data.readers import DataError, read_images, read_masks, read_pages, to_single_channel

RGB_PIXEL = (200, 100, 50)
RGB_LUMINANCE = 0.299 * 200 + 0.587 * 100 + 0.114 * 50  # 124.2, by hand from ITU-R BT.601


def write(path: Path, array: np.ndarray, colour: bool = False) -> Path:
    """Write ``array`` (channels in RGB(A) order when ``colour``) with the library its suffix calls for."""
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="rgb" if colour else "minisblack")
    else:
        if colour:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        assert cv2.imwrite(str(path), array)
    return path


def ramp(dtype, scale: float = 1.0) -> np.ndarray:
    return (np.arange(4 * 6).reshape(4, 6) * scale).astype(dtype)


def rgb_image(alpha: int | None = None) -> np.ndarray:
    image = np.zeros((4, 6, 3 if alpha is None else 4), np.uint8)
    image[..., :3] = 10
    image[1, 2, :3] = RGB_PIXEL
    if alpha is not None:
        image[..., 3] = alpha
    return image


GREY_CASES = [  # suffix, array written, dtype read back, exact (False for lossy JPEG)
    (".png", ramp(np.uint8, 10), np.uint8, True),
    (".png", ramp(np.uint16, 2000), np.uint16, True),
    (".jpg", np.full((8, 8), 100, np.uint8), np.uint8, False),
    (".jpeg", np.full((8, 8), 100, np.uint8), np.uint8, False),
    (".tif", ramp(np.uint8, 10), np.uint8, True),
    (".tiff", ramp(np.uint16, 2000), np.uint16, True),
    (".TIF", ramp(np.uint16, 2000), np.uint16, True),
    (".tif", ramp(np.int16, -100), np.int16, True),
    (".tif", ramp(np.float32, 0.1), np.float32, True),
    (".tif", ramp(np.float64, 0.1), np.float32, True),
    (".tif", ramp(np.uint8) % 2 == 1, np.uint8, True),
]


@pytest.mark.parametrize("suffix, array, dtype, exact", GREY_CASES)
def test_read_images_keeps_grey_values_and_dtype(tmp_path, suffix, array, dtype, exact):
    (image,) = read_images(write(tmp_path / f"a{suffix}", array))
    assert image.shape == array.shape and image.dtype == dtype
    expected = array.astype(dtype)
    assert np.array_equal(image, expected) if exact else np.allclose(image, expected, atol=2)


COLOUR_CASES = [  # suffix, RGB(A) array, pixel checked, expected value there
    (".png", rgb_image(), (1, 2), RGB_LUMINANCE),
    (".tif", rgb_image(), (1, 2), RGB_LUMINANCE),
    (".png", rgb_image(alpha=0), (1, 2), RGB_LUMINANCE),  # alpha ignored: transparent pixels keep their value
    (".png", rgb_image(alpha=255), (1, 2), RGB_LUMINANCE),
    (".tif", rgb_image(alpha=7), (1, 2), RGB_LUMINANCE),
    (".png", np.full((4, 6, 3), (255, 0, 0), np.uint8), (0, 0), 0.299 * 255),  # channel order: red stays red
    (".png", np.full((4, 6, 3), (0, 0, 255), np.uint8), (0, 0), 0.114 * 255),
    (".tif", np.full((4, 6, 3), (0, 0, 255), np.uint8), (0, 0), 0.114 * 255),
]


@pytest.mark.parametrize("suffix, array, pixel, expected", COLOUR_CASES)
def test_colour_images_become_bt601_luminance(tmp_path, suffix, array, pixel, expected):
    (image,) = read_images(write(tmp_path / f"a{suffix}", array, colour=True))
    assert image.shape == array.shape[:2] and image.dtype == np.float32
    assert image[pixel] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_grey_stored_as_rgb_keeps_its_channel_and_dtype(tmp_path, suffix):
    grey = ramp(np.uint16, 2000)
    (image,) = read_images(write(tmp_path / f"a{suffix}", np.dstack([grey] * 3), colour=True))
    assert image.dtype == np.uint16 and np.array_equal(image, grey)


STACK_CASES = [  # array written, photometric, number of pages, shape of one page as read
    (np.arange(5 * 4 * 6, dtype=np.uint8).reshape(5, 4, 6), None, 5, (4, 6)),  # tifffile.imwrite default
    (np.arange(2 * 4 * 6, dtype=np.uint16).reshape(2, 4, 6), None, 2, (4, 6)),
    (np.arange(3 * 4 * 6, dtype=np.uint8).reshape(3, 4, 6), "minisblack", 3, (4, 6)),
    (np.zeros((2, 4, 6, 3), np.uint8), "rgb", 2, (4, 6, 3)),
    (np.zeros((4, 6, 3), np.uint8), "rgb", 1, (4, 6, 3)),
]


@pytest.mark.parametrize("array, photometric, n_pages, page_shape", STACK_CASES)
def test_tiff_stacks_read_one_array_per_page(tmp_path, array, photometric, n_pages, page_shape):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, array, photometric=photometric)
    pages = read_pages(path)
    assert len(pages) == n_pages and all(page.shape == page_shape for page in pages)
    assert np.array_equal(np.stack(pages), array.reshape(n_pages, *page_shape))


def test_planar_rgb_tiff_reads_channels_last(tmp_path):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(rgb_image(), -1, 0), photometric="rgb", planarconfig="separate")
    (image,) = read_images(path)
    assert image.shape == (4, 6) and image[1, 2] == pytest.approx(RGB_LUMINANCE, abs=1e-3)


def label_mask() -> np.ndarray:
    mask = np.zeros((4, 6), np.uint16)
    mask[0, 0], mask[1, 1], mask[2, 2] = 1, 300, 65535
    return mask


MASK_CASES = [  # suffix, array written, colour, expected foreground
    (".png", np.eye(4, 6, dtype=np.uint8), False, np.eye(4, 6, dtype=bool)),  # 0/1
    (".png", np.eye(4, 6, dtype=np.uint8) * 255, False, np.eye(4, 6, dtype=bool)),  # 0/255
    (".tif", np.eye(4, 6, dtype=np.uint8) * 255, False, np.eye(4, 6, dtype=bool)),
    (".tif", np.eye(4, 6, dtype=bool), False, np.eye(4, 6, dtype=bool)),
    (".tif", label_mask(), False, label_mask() > 0),  # instance labels
    (".png", label_mask(), False, label_mask() > 0),
    (".tif", np.eye(4, 6, dtype=np.float32) * 0.5, False, np.eye(4, 6, dtype=bool)),
    (".png", np.dstack([np.zeros((4, 6), np.uint8)] * 2 + [np.eye(4, 6, dtype=np.uint8)]), True,
     np.eye(4, 6, dtype=bool)),  # blue-only foreground: any channel counts
    (".tif", np.dstack([np.eye(4, 6, dtype=np.uint8)] + [np.zeros((4, 6), np.uint8)] * 2), True,
     np.eye(4, 6, dtype=bool)),
    (".png", np.dstack([np.eye(4, 6, dtype=np.uint8) * 255] * 3 + [np.full((4, 6), 255, np.uint8)]), True,
     np.eye(4, 6, dtype=bool)),  # opaque alpha everywhere is not foreground
]


@pytest.mark.parametrize("suffix, array, colour, expected", MASK_CASES)
def test_read_masks_foreground_is_any_value_above_zero(tmp_path, suffix, array, colour, expected):
    (mask,) = read_masks(write(tmp_path / f"m{suffix}", array, colour=colour))
    assert mask.dtype == bool and np.array_equal(mask, expected)


def test_read_masks_reads_every_page_of_a_stack(tmp_path):
    stack = np.zeros((5, 4, 6), np.uint8)
    for i in range(5):
        stack[i, i % 4, i] = 255
    masks = read_masks(write(tmp_path / "m.tif", stack))
    assert np.array_equal(np.stack(masks), stack > 0)


FILE_ERROR_CASES = [  # file name, content (None: no file), what the message says
    ("missing.tif", None, "no such file"),
    ("image.bmp", b"BM", "unknown image suffix"),
    ("notes.txt", b"hello", "unknown image suffix"),
    ("corrupt.tif", b"this is not a tiff", "unreadable or corrupt"),
    ("corrupt.png", b"\x89PNG\r\n\x1a\n garbage", "unreadable or corrupt"),
    ("corrupt.jpg", b"\xff\xd8 garbage", "unreadable or corrupt"),
    ("empty.png", b"", "unreadable or corrupt"),
]


@pytest.mark.parametrize("name, content, problem", FILE_ERROR_CASES)
@pytest.mark.parametrize("reader", [read_pages, read_images, read_masks])
def test_unreadable_files_raise_data_error_naming_the_file(tmp_path, reader, name, content, problem):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}.*{problem}") as info:
        reader(path)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


BAD_PAGE_CASES = [  # page, what the message says
    (np.zeros((4, 6), np.complex64), "unsupported pixel type complex64"),
    (np.zeros((4, 6), np.float16), "unsupported pixel type float16"),
    (np.zeros((4, 6, 5), np.uint8), r"unsupported image shape \(4, 6, 5\)"),
    (np.zeros(6, np.uint8), r"unsupported image shape \(6,\)"),
    (np.zeros((2, 4, 6, 3), np.uint8), "unsupported image shape"),
]


@pytest.mark.parametrize("page, problem", BAD_PAGE_CASES)
def test_to_single_channel_refuses_unsupported_pages(page, problem):
    with pytest.raises(DataError, match=rf"odd\.tif: {problem}"):
        to_single_channel(page, "odd.tif")


@pytest.mark.parametrize("page, expected", [
    (np.ones((4, 6, 1), np.uint16) * 9, np.ones((4, 6), np.uint16) * 9),
    (np.dstack([np.full((4, 6), 9, np.uint8), np.zeros((4, 6), np.uint8)]), np.full((4, 6), 9, np.uint8)),  # + alpha
    (np.ones((4, 6), bool), np.ones((4, 6), np.uint8)),
])
def test_to_single_channel_squeezes_and_drops_alpha(page, expected):
    result = to_single_channel(page, "x.tif")
    assert result.dtype == expected.dtype and np.array_equal(result, expected)


def test_unsupported_mask_dtype_names_the_file(tmp_path):
    path = tmp_path / "cplx.tif"
    tifffile.imwrite(path, np.ones((4, 6), np.complex64))
    with pytest.raises(DataError, match=r"cplx\.tif: unsupported pixel type"):
        read_masks(path)


def _damaged(kind: str, folder: Path) -> bytes:
    """A file of ``kind`` damaged as files are in practice: cut short, a flipped bit, garbage in the scan data."""
    image = (np.random.default_rng(0).random((200, 300)) * 255).astype(np.uint8)
    png, jpg = (cv2.imencode(suffix, image)[1].tobytes() for suffix in (".png", ".jpg"))
    if kind == "png cut short":
        return png[: len(png) // 2]
    if kind == "png header only":
        return png[:33]
    if kind == "png with a bad checksum":
        return png[:40] + bytes([png[40] ^ 1]) + png[41:]
    if kind == "jpeg with garbage in its scan":  # libjpeg decodes it, grey-filled, and only says so on stderr
        return jpg[:1000] + b"\xff\xd0" * 10 + jpg[1020:]
    tifffile.imwrite(folder / "whole.tif", np.stack([image] * 3), photometric="minisblack", compression="zlib",
                     tile=(64, 64))
    data = (folder / "whole.tif").read_bytes()
    return data[: len(data) // 2]  # "tiff stack cut short": tifffile would return its first page alone


DAMAGED_CASES = [  # kind, suffix, what the message says (the library's own complaint, in segft's line)
    ("png cut short", ".png", "PNG input buffer is incomplete"),
    ("png header only", ".png", "PNG input buffer is incomplete"),
    ("png with a bad checksum", ".png", "CRC error"),
    ("jpeg with garbage in its scan", ".jpg", "Corrupt JPEG data"),
    ("tiff stack cut short", ".tif", "tifffile: invalid page offset"),
]


@pytest.mark.parametrize("kind, suffix, reason", DAMAGED_CASES)
def test_a_damaged_file_is_refused_in_segfts_line_alone(tmp_path, capfd, kind, suffix, reason):
    """No library writes to stderr (file descriptor 2, where libpng and libjpeg write, or through logging) on a
    damaged file: its complaint is the reason in segft's one line, and a file read in part is refused."""
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(_damaged(kind, tmp_path))
    with pytest.raises(DataError, match=rf"damaged\{suffix}: unreadable or corrupt image file \(.*{reason}"):
        read_images(path)
    assert capfd.readouterr().err == ""
