"""Peak resident memory of ``segft predict`` on one synthetic uint8 image per size, on CPU.

A fresh untrained default model (``TrainConfig()``: its architecture, patch size and overlap) is saved as the
pyfunc ``segft predict`` loads; each image is written as a TIFF and segmented by
``python -m segft predict --model <pyfunc> --input <tif> --output <folder> --device cpu``, one fresh process per
size. A process's peak resident memory is the kernel's ``ru_maxrss`` of that child, read with ``os.wait4``
(Linux: kilobytes). A baseline process imports what ``segft predict`` imports and loads the model without
predicting: the fixed overhead, whatever the image. Every child runs the code of this checkout (``PYTHONPATH``).

Checks the criterion of issue 13: the peak on the second size (4096²) is at most twice the peak on the first
(1024²) plus the second image's own bytes, so memory no longer grows with the number of windows.

    python benchmarks/predict_memory.py --out benchmarks/results/predict-memory-cpu.json
    python benchmarks/predict_memory.py --smoke      # 64² and 256²: checks that it works
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from provenance import ROOT, provenance

MODEL_CONFIG = {"device": "cpu", "autocast": "off"}  # what ``segft predict --device cpu`` loads the model with


def save_model(folder: Path) -> None:
    """(child) Save a fresh untrained default model as a pyfunc in ``folder``/pyfunc."""
    import torch

    from segft import tracking
    from segft.checkpoint import InferenceSettings, save_checkpoint
    from segft.config import TrainConfig
    from segft.models import build_model
    from segft.pyfunc import pyfunc_arguments

    torch.manual_seed(0)
    train = TrainConfig()
    settings = InferenceSettings(train.patch_size, train.overlap)
    checkpoint = save_checkpoint(build_model(train.model).eval(), train.model, settings, folder / "checkpoint")
    tracking.save_model(pyfunc_arguments(checkpoint), folder / "pyfunc")


def load_model(folder: Path) -> None:
    """(child) Import what ``segft predict`` imports and load the model, without predicting: the baseline."""
    import segft.cli
    import segft.predict  # noqa: F401
    from segft import tracking

    tracking.load_model(str(folder / "pyfunc"), MODEL_CONFIG)


def peak_rss_mb(arguments: list[str], log: Path) -> float:
    """Run ``python <arguments>`` as a fresh process on this checkout's code and return its peak resident MB.

    Raises:
        RuntimeError: If the child fails (with the end of its output).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, *arguments], cwd=ROOT, env=env, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)  # the rusage of this one child, not of all children so far
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(arguments)} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024


def windows(side: int, patch_size: int, stride: int) -> int:
    """Number of sliding windows over a ``side`` x ``side`` image (``segft.data.patches.grid``)."""
    from segft.data.patches import grid

    return len(grid((side, side), patch_size, stride)[0])


def measure(sizes: list[int], folder: Path) -> dict:
    from segft.config import PredictConfig, TrainConfig
    from segft.inference import window_stride

    script = str(Path(__file__).resolve())
    peak_rss_mb([script, "--save-model", str(folder)], folder / "save.log")
    baseline = peak_rss_mb([script, "--load-model", str(folder)], folder / "baseline.log")
    print(f"baseline (imports + model loaded): {baseline:.0f} MB", flush=True)
    train, predict = TrainConfig(), PredictConfig()
    stride = window_stride(train.patch_size, train.overlap)
    rows = []
    for side in sizes:
        image = np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)
        path = folder / f"image-{side}.tif"
        tifffile.imwrite(path, image, photometric="minisblack")
        peak = peak_rss_mb(["-m", "segft", "predict", "--model", str(folder / "pyfunc"), "--input", str(path),
                          "--output", str(folder / f"masks-{side}"), "--device", "cpu"], folder / f"predict-{side}.log")
        rows.append({"side": side, "image_bytes": image.nbytes, "windows": windows(side, train.patch_size, stride),
                     "peak_rss_mb": peak, "above_baseline_mb": peak - baseline,
                     "bytes_per_pixel_above_baseline": (peak - baseline) * 2**20 / image.size})
        print(f"{side} x {side} ({rows[-1]['windows']} windows): peak {peak:.0f} MB, {peak - baseline:.0f} MB above "
              "the baseline", flush=True)
        path.unlink()
    small, large = rows[0], rows[1]
    limit = 2 * small["peak_rss_mb"] + large["image_bytes"] / 2**20
    criterion = {
        "rule": f"peak({large['side']}²) <= 2 x peak({small['side']}²) + image bytes({large['side']}²)",
        "peak_mb": large["peak_rss_mb"], "limit_mb": limit, "passed": large["peak_rss_mb"] <= limit,
    }
    print(f"criterion {criterion['rule']}: {criterion['peak_mb']:.0f} <= {limit:.0f} MB: "
          f"{'pass' if criterion['passed'] else 'FAIL'}")
    return {"device": "cpu", "model": "default (TrainConfig().model), untrained", "patch_size": train.patch_size,
            "overlap": train.overlap, "batch_size": predict.batch_size, "image_dtype": "uint8",
            "baseline_rss_mb": baseline, "sizes": rows, "criterion": criterion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192],
                        help="image sides in pixels; the criterion compares the first two (default: 1024 4096 8192)")
    parser.add_argument("--smoke", action="store_true", help="sizes 64 and 256: checks that it works")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--save-model", type=Path, help=argparse.SUPPRESS)  # the children's roles
    parser.add_argument("--load-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.save_model:
        return save_model(args.save_model)
    if args.load_model:
        return load_model(args.load_model)
    sizes = [64, 256] if args.smoke else args.sizes
    if len(sizes) < 2:
        parser.error("--sizes needs at least two sizes (the criterion compares the first two)")
    with tempfile.TemporaryDirectory(prefix="segft-predict-memory-") as folder:
        report = {**provenance("predict"), **measure(sizes, Path(folder))}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
