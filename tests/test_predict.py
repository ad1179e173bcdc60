"""``segft predict`` with a model saved to a local folder: files, folders and stacks in, masks out, inputs untouched."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import tifffile
import torch

from segft import cli, tracking
from segft.pyfunc import pyfunc_arguments
from segft.checkpoint import InferenceSettings, save_checkpoint
from segft.config import ModelConfig, PredictConfig
from segft.data.readers import read_images, read_masks, read_pages
from segft.models import build_model
from segft.predict import list_inputs, page_stems

CONFIG = ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """A small random model saved as a pyfunc folder (``--model`` takes any MLflow model URI, folders included)."""
    torch.manual_seed(0)
    model = build_model(CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    root = tmp_path_factory.mktemp("model")
    checkpoint = save_checkpoint(model.eval(), CONFIG, InferenceSettings(patch_size=32), root / "checkpoint")
    return str(tracking.save_model(pyfunc_arguments(checkpoint), root / "pyfunc"))


@pytest.fixture(scope="module")
def pyfunc(model_path):
    return mlflow.pyfunc.load_model(model_path)


def _write_png(path, array):
    cv2.imencode(".png", array)[1].tofile(path)


@pytest.fixture
def inputs(tmp_path):
    """A folder with an 8-bit PNG, a 3-page 16-bit TIFF stack and an RGB PNG, in natural order img1, img2, img10."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_png(folder / "img1.png", (rng.random((45, 61)) * 255).astype(np.uint8))
    tifffile.imwrite(folder / "img2.tif", (rng.random((3, 40, 50)) * 65535).astype(np.uint16),
                     photometric="minisblack")
    _write_png(folder / "img10.png", (rng.random((30, 40, 3)) * 255).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _snapshot(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _predict(model_path, *args) -> int:
    return cli.main(["predict", "--model", model_path, *map(str, args)])


def test_folder_in_tif_masks_out_stacks_stay_stacks(model_path, pyfunc, inputs, tmp_path, capsys):
    before = _snapshot(inputs)
    out = tmp_path / "masks"
    assert _predict(model_path, "--input", inputs, "--output", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img10_mask.tif", "img1_mask.tif", "img2_mask.tif"]
    for stem in ("img1", "img2", "img10"):
        source = next(inputs.glob(f"{stem}.*"))
        images, masks = read_images(source), read_masks(out / f"{stem}_mask.tif")
        assert len(masks) == len(images)
        for image, mask in zip(images, masks):
            np.testing.assert_array_equal(mask, pyfunc.predict(image) > 0)
    assert np.unique(read_pages(out / "img2_mask.tif")[0]).tolist() in ([0], [255], [0, 255])
    assert _snapshot(inputs) == before
    assert "3 file(s)" in capsys.readouterr().out


def test_png_format_writes_one_file_per_page_and_overlays(model_path, inputs, tmp_path):
    out = tmp_path / "masks"
    assert _predict(model_path, "--input", inputs, "--output", out, "--format", "png", "--overlays") == 0
    names = sorted(p.name for p in out.iterdir())
    pages = [f"img2-p00{i}" for i in (1, 2, 3)]
    assert names == sorted([f"{s}_mask.png" for s in ["img1", "img10", *pages]]
                           + [f"{s}_overlay.png" for s in ["img1", "img10", *pages]])
    overlay = read_pages(out / "img1_overlay.png")[0]
    assert overlay.shape == (45, 61, 3) and overlay.dtype == np.uint8


def test_single_file_next_to_itself(model_path, inputs):
    before = _snapshot(inputs)
    assert _predict(model_path, "--input", inputs / "img2.tif", "--output", inputs) == 0
    assert len(read_masks(inputs / "img2_mask.tif")) == 3
    after = _snapshot(inputs)
    assert {name: after[name] for name in before} == before


def test_settings_reach_the_model(model_path, pyfunc, inputs, tmp_path):
    out = tmp_path / "masks"
    assert _predict(model_path, "--input", inputs / "img1.png", "--output", out, "--threshold", "0.2",
                    "--overlap", "0.25", "--batch-size", "2", "--device", "cpu", "--autocast", "off") == 0
    image = read_images(inputs / "img1.png")[0]
    expected = pyfunc.predict(image, params={"threshold": 0.2, "overlap": 0.25})
    np.testing.assert_array_equal(read_masks(out / "img1_mask.tif")[0], expected > 0)


@pytest.mark.parametrize("make_args, message", [
    (lambda inputs, tmp: ["--input", inputs, "--output", inputs], "is the input folder"),
    (lambda inputs, tmp: ["--input", tmp / "missing", "--output", tmp / "out"], "no such file or folder"),
    (lambda inputs, tmp: ["--input", inputs / "notes.txt", "--output", tmp / "out"], "not an image file"),
    (lambda inputs, tmp: ["--input", inputs, "--output", ""], "needs --input"),
    (lambda inputs, tmp: ["--input", inputs, "--output", tmp / "out", "--format", "jpg"], "unknown format"),
])
def test_bad_requests_fail_in_one_line_and_write_nothing(model_path, inputs, tmp_path, capsys, make_args, message):
    before = _snapshot(inputs)
    assert _predict(model_path, *make_args(inputs, tmp_path)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("segft: error:") and message in error
    assert _snapshot(inputs) == before and not (tmp_path / "out").exists()


def test_missing_model_is_reported(inputs, tmp_path, capsys):
    assert _predict(str(tmp_path / "no-model"), "--input", inputs, "--output", tmp_path / "out") == 2
    assert "cannot load model" in capsys.readouterr().err


def test_folder_listing_is_natural_and_refuses_clashing_names(inputs, tmp_path):
    assert [p.name for p in list_inputs(inputs)] == ["img1.png", "img2.tif", "img10.png"]
    _write_png(inputs / "img1.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="img1.png and img1.tif"):
        list_inputs(inputs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        list_inputs(empty)


def test_page_names_match_the_dataset_convention():
    assert page_stems("a", 1) == ["a"]
    assert page_stems("a", 3) == ["a-p001", "a-p002", "a-p003"]


def test_default_model_is_the_champion():
    assert PredictConfig().model == "models:/segft-finetuned@champion"


# ---- issue 22: a model's code never runs; memory bounded by a budget; --output checked first; bad images in one
# line; an interrupt says only what is true of predict


def _plant(model_folder, marker) -> None:
    """Append a line that creates ``marker`` to the Python files logged with a model (its models-from-code file
    and its packaged copy of segft): it would run if anything imported them."""
    for code in [model_folder / "mlflow_model.py", *sorted((model_folder / "code").rglob("*.py"))]:
        code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")


def test_a_tampered_model_folder_runs_no_code(model_path, pyfunc, inputs, tmp_path):
    model = shutil.copytree(model_path, tmp_path / "tampered")
    _plant(model, tmp_path / "code-ran")
    out = tmp_path / "masks"
    assert _predict(str(model), "--input", inputs / "img1.png", "--output", out) == 0
    assert not (tmp_path / "code-ran").exists()
    image = read_images(inputs / "img1.png")[0]
    np.testing.assert_array_equal(read_masks(out / "img1_mask.tif")[0], pyfunc.predict(image) > 0)


def test_a_tampered_registered_model_runs_no_code(model_path, pyfunc, inputs, tmp_path, store, monkeypatch):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(os.path.join(model_path, "artifacts", "checkpoint"), checkpoint)
    with mlflow.start_run():
        model_id = tracking.log_model(pyfunc_arguments(checkpoint), "model")
    mlflow.register_model(f"models:/{model_id}", "segft-base")
    location = mlflow.get_logged_model(model_id).artifact_location
    _plant(Path(location.removeprefix("file://")), tmp_path / "code-ran")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    out = tmp_path / "masks"
    assert _predict("models:/segft-base/1", "--input", inputs / "img1.png", "--output", out) == 0
    assert not (tmp_path / "code-ran").exists()
    image = read_images(inputs / "img1.png")[0]
    np.testing.assert_array_equal(read_masks(out / "img1_mask.tif")[0], pyfunc.predict(image) > 0)


def test_a_tiff_over_the_memory_budget_is_segmented_in_strips(model_path, pyfunc, tmp_path):
    """With a 1 MB budget a 2-page 300 x 410 stack is read, segmented and written strip by strip: a tiled mask
    TIFF with the pyfunc's masks."""
    stack = (np.random.default_rng(1).random((2, 300, 410)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", stack, photometric="minisblack", compression="zlib", tile=(64, 64))
    out = tmp_path / "masks"
    assert _predict(model_path, "--input", tmp_path / "big.tif", "--output", out, "--memory-budget-mb", "1",
                    "--overlap", "0.25") == 0
    assert sorted(path.name for path in out.iterdir()) == ["big_mask.tif"]
    with tifffile.TiffFile(out / "big_mask.tif") as masks:
        assert len(masks.pages) == 2 and all(page.is_tiled for page in masks.pages)
    for image, mask in zip(stack, read_masks(out / "big_mask.tif"), strict=True):
        np.testing.assert_array_equal(mask, pyfunc.predict(image, params={"overlap": 0.25}) > 0)


@pytest.mark.parametrize("name, args, message", [
    ("big.png", [], "only TIFF files are read in strips"),
    ("big.jpg", [], "only TIFF files are read in strips"),
    ("big.tif", ["--format", "png"], "--format png and --overlays cannot be written in strips"),
    ("big.tif", ["--overlays"], "--format png and --overlays cannot be written in strips"),
    ("tall-strips.tif", [], "cannot be read in strips: it is compressed in strips of 700 rows"),
])
def test_what_cannot_stream_over_the_budget_is_refused_before_the_model_loads(tmp_path, capsys, name, args,
                                                                               message):
    image = (np.random.default_rng(2).random((700, 800)) * 255).astype(np.uint8)
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, image, photometric="minisblack", compression="zlib", rowsperstrip=700)
    else:
        cv2.imencode(path.suffix, image)[1].tofile(path)
    budget = "1" if name != "big.tif" else "2"  # 2 MB: decodes the 700-row strips (0.5 MB), refuses the rest
    status = _predict(str(tmp_path / "no-such-model"), "--input", path, "--output", tmp_path / "out",
                      "--memory-budget-mb", budget, *args)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and name in line and "--memory-budget-mb" in line and message in line, line
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_created_is_named_before_the_model_loads(inputs, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    status = _predict(str(tmp_path / "no-such-model"), "--input", inputs, "--output", tmp_path / "a-file" / "masks")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and "a-file/masks: --output cannot be created" in line, line


def test_a_truncated_png_gives_segfts_line_alone(model_path, inputs, tmp_path, capfd):
    """Nothing but segft's one line reaches stderr (file descriptor 2: libpng writes there, not to sys.stderr)."""
    data = (inputs / "img1.png").read_bytes()
    (inputs / "img1.png").write_bytes(data[: len(data) // 2])
    assert _predict(model_path, "--input", inputs, "--output", tmp_path / "masks") == 2
    lines = [line for line in PROGRESS_BAR.sub("", capfd.readouterr().err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("segft: error: ") and "img1.png" in lines[0], lines


#: A tqdm progress bar (``predict:   0%|    | 0/3 [00:00<?, ?image/s]``), which other text may share a line with.
PROGRESS_BAR = re.compile(r"[^\r\n|]*\d+%\|[^|\r\n]*\|[^\[\r\n]*\[[^\]\r\n]*\]")


def test_sigterm_during_predict_says_nothing_of_runs(model_path, tmp_path, capsys):
    """SIGTERM once the first mask is written: exit 143, and the message claims no MLflow runs (predict has none)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(40):
        _write_png(folder / f"img{i}.png", (np.random.default_rng(i).random((96, 96)) * 255).astype(np.uint8))
    out = tmp_path / "masks"

    def terminate_once_predicting():
        deadline = time.time() + 120
        while not (out.exists() and any(out.glob("*_mask.tif"))) and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_once_predicting, daemon=True)
    watcher.start()
    status = _predict(model_path, "--input", folder, "--output", out)
    watcher.join()
    assert status == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "segft: interrupted by SIGTERM"
    assert 0 < len(list(out.glob("*_mask.tif"))) < 40


def _peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory of a fresh ``python -m segft`` process on this checkout (Linux ``ru_maxrss``)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "segft", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, stderr.decode()[-3000:]
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_memory_is_bounded_by_the_budget_not_by_the_image(model_path, tmp_path):
    """A 4000 x 4000 image with a 32 MB budget: the process's peak stays within the budget plus the normalization
    sample's share above the peak of a tiny image's process (segmented whole, it takes about 220 MB more)."""
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((64, 64), np.uint8), photometric="minisblack")
    big = (np.random.default_rng(3).random((4000, 4000)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", big, photometric="minisblack")
    common = ["--model", model_path, "--device", "cpu", "--batch-size", "64", "--memory-budget-mb", "32"]
    baseline = _peak_rss_mb(["predict", "--input", str(tmp_path / "small.tif"), "--output", str(tmp_path / "a"),
                             *common])
    peak = _peak_rss_mb(["predict", "--input", str(tmp_path / "big.tif"), "--output", str(tmp_path / "b"), *common])
    assert peak - baseline < 32 + 64, (baseline, peak)
    assert read_masks(tmp_path / "b" / "big_mask.tif")[0].shape == (4000, 4000)
