"""Whole-image inference throughput, in megapixels per second.

Segments one ``--size`` x ``--size`` image (default 2048 x 2048, 16-bit) with the default model (``ModelConfig()``:
resnet18 encoder, depth 4, random weights: speed does not depend on their values) at the default inference
settings (128 x 128 windows, 50 % overlap, Gaussian blending, 16 windows per batch), exactly as the pyfunc and
``segft predict`` do: normalize, slide, blend, threshold. Runs on the device present (CUDA when available, else
CPU); on CUDA it measures float32 and bfloat16 autocast (the default there), on CPU float32 only (the default
there). Each row: one warm-up, then ``--repeats`` timed runs; MP/s is from the median time.

    python benchmarks/inference.py --out inference.json
    python benchmarks/inference.py --smoke            # a 256 x 256 image, one run: checks that it works

On a CPU shared with other work, compare ``--threads 1`` with the default: oversubscribed OpenMP threads can be
several times slower than one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from segft.config import ModelConfig, PredictConfig, TrainConfig
from segft.data.patches import grid
from segft.inference import SlidingWindowSegmenter, window_stride
from segft.models import build_model
from segft.training import resolve_device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    name = model or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def time_runs(segmenter: SlidingWindowSegmenter, image: np.ndarray, repeats: int) -> list[float]:
    """Seconds per whole-image segmentation (the result comes back to the host, so CUDA work is included)."""
    segmenter(image)  # warm-up: allocations, cuDNN algorithm choice
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter(image)
        seconds.append(time.perf_counter() - start)
    return seconds


def run(size: int, repeats: int, device_arg: str, batch_size: int) -> dict:
    device = resolve_device(device_arg)
    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device).eval()
    image = np.random.default_rng(0).integers(0, 65535, (size, size), dtype=np.uint16)
    windows = len(grid(image.shape, train.patch_size, window_stride(train.patch_size, train.overlap))[0])
    precisions = {"float32": False, "bfloat16 autocast": True} if device.type == "cuda" else {"float32": False}
    rows = []
    for precision, autocast in precisions.items():
        segmenter = SlidingWindowSegmenter(model, train.patch_size, train.overlap, batch_size, device=device,
                                           autocast=autocast)
        seconds = time_runs(segmenter, image, repeats)
        median = statistics.median(seconds)
        rows.append({"precision": precision, "seconds": seconds, "median_s": median,
                     "megapixels_per_s": image.size / 1e6 / median})
    return {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "image": list(image.shape), "patch_size": train.patch_size, "overlap": train.overlap,
        "batch_size": batch_size, "windows": windows, "model": "ModelConfig() defaults, random weights",
        "results": rows,
    }


def table(report: dict) -> str:
    lines = [f"{report['image'][0]} x {report['image'][1]} image, {report['windows']} windows of "
             f"{report['patch_size']} px at overlap {report['overlap']}, batch {report['batch_size']}, "
             f"on {report['device']} ({report['device_name']})",
             f"{'precision':<20} {'median s':>9} {'MP/s':>8}"]
    lines += [f"{r['precision']:<20} {r['median_s']:>9.3f} {r['megapixels_per_s']:>8.3f}" for r in report["results"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels (default: 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (default: 3)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size,
                        help="windows per forward pass (default: the pyfunc's)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: 0 = torch's own choice, one per core)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="a 256 x 256 image and one run: a quick check")
    args = parser.parse_args()
    size, repeats = (256, 1) if args.smoke else (args.size, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(size, repeats, args.device, args.batch_size)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
