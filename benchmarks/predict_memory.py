"""Peak resident memory of ``segft predict`` on one synthetic uint8 image per size, on CPU.

A fresh untrained default model (``TrainConfig()``: its architecture, patch size and overlap) is saved as the
pyfunc ``segft predict`` loads; each image is written as an (uncompressed) TIFF and segmented by
``python -m segft predict --model <pyfunc> --input <tif> --output <folder> --device cpu``, one fresh process per
size, with the default ``--memory-budget-mb`` (images that need more are segmented strip by strip). A process's
peak resident memory is the kernel's ``ru_maxrss`` of that child, read with ``os.wait4`` (Linux: kilobytes), and
its wall time is measured around it. A baseline process imports what ``segft predict`` imports and loads the model
without predicting: the fixed overhead, whatever the image. Every child runs the code of this checkout
(``PYTHONPATH``).

Checks the criterion of issue 13: the peak on the second size (4096²) is at most twice the peak on the first
(1024²) plus the second image's own bytes, so memory no longer grows with the number of windows; and the bound of
issue 22: the peak on the largest size (20000², a 400 MB image) stays under 2 GB.

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
import time
from pathlib import Path

import numpy as np
import tifffile

from provenance import ROOT, provenance

#: Issue 22: ``segft predict`` on the largest size stays under this peak (a 20000² uint8 image: 400 MB).
BOUND_MB = 2048


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
    """(child) Import what ``segft predict`` imports and load the model as it does, without predicting: the
    baseline."""
    import segft.cli  # noqa: F401
    from segft.config import PredictConfig
    from segft.predict import load_model

    load_model(PredictConfig(model=str(folder / "pyfunc"), device="cpu"))


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
    from segft.predict import in_strips

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
        del image
        strips = in_strips(path, PredictConfig(format="tif"))
        start = time.perf_counter()
        peak = peak_rss_mb(["-m", "segft", "predict", "--model", str(folder / "pyfunc"), "--input", str(path),
                          "--output", str(folder / f"masks-{side}"), "--device", "cpu"], folder / f"predict-{side}.log")
        seconds = time.perf_counter() - start
        rows.append({"side": side, "image_bytes": side * side, "windows": windows(side, train.patch_size, stride),
                     "in_strips": strips, "seconds": seconds, "peak_rss_mb": peak, "above_baseline_mb": peak - baseline,
                     "bytes_per_pixel_above_baseline": (peak - baseline) * 2**20 / side**2})
        print(f"{side} x {side} ({rows[-1]['windows']} windows, {'in strips' if strips else 'whole'}): peak "
              f"{peak:.0f} MB, {peak - baseline:.0f} MB above the baseline, {seconds:.0f} s", flush=True)
        path.unlink()
        for mask in (folder / f"masks-{side}").iterdir():
            mask.unlink()
    small, large = rows[0], rows[1]
    limit = 2 * small["peak_rss_mb"] + large["image_bytes"] / 2**20
    criterion = {
        "rule": f"peak({large['side']}²) <= 2 x peak({small['side']}²) + image bytes({large['side']}²)",
        "peak_mb": large["peak_rss_mb"], "limit_mb": limit, "passed": large["peak_rss_mb"] <= limit,
    }
    largest = rows[-1]
    bound = {"rule": f"peak({largest['side']}²) <= {BOUND_MB:,} MB", "peak_mb": largest["peak_rss_mb"],
             "limit_mb": BOUND_MB, "passed": largest["peak_rss_mb"] <= BOUND_MB}
    for check in (criterion, bound):
        print(f"{check['rule']}: {check['peak_mb']:.0f} <= {check['limit_mb']:.0f} MB: "
              f"{'pass' if check['passed'] else 'FAIL'}")
    return {"device": "cpu", "model": "default (TrainConfig().model), untrained", "patch_size": train.patch_size,
            "overlap": train.overlap, "batch_size": predict.batch_size, "memory_budget_mb": predict.memory_budget_mb,
            "image_dtype": "uint8", "baseline_rss_mb": baseline, "sizes": rows, "criterion": criterion,
            "bound": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 20000],
                        help="image sides in pixels; the criterion compares the first two, the bound checks the last "
                             "(default: 1024 4096 8192 20000)")
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
