"""Training and inference speed of the default model and of the original study's network (``arch=paulow``).

In one run, on whatever device is present (CUDA if available, else CPU), measures:

- training: optimizer steps per second and patches per second at batch 4 (the protocol) and at a large batch,
  for each model and each step mode (``segft.train_step``: eager and compiled on CPU; eager and CUDA graph,
  float32 and bfloat16 autocast, on CUDA), and the projected pure-compute time of the original protocol (base
  training plus fine-tuning with 5/10/15/20 images, 100 epochs each: 18,750 steps at batch 4);
- inference: megapixels per second for one 2048 x 2048 16-bit image segmented with the default model exactly as
  ``segft predict`` does it (normalize, 128 x 128 windows at 50 % overlap, Gaussian blending, threshold);
- peak memory: the process's peak resident memory, and on CUDA the peak memory torch allocated.

Prints a table and writes JSON. Not a test: ``tests/test_benchmarks.py`` only runs ``--smoke``.

    python benchmarks/speed.py --out benchmarks/results/speed-cpu.json
    python benchmarks/speed.py --smoke            # a few tiny steps and a 256 x 256 image: checks that it works

On a CPU shared with other work, numbers can be several times slower: oversubscribed OpenMP threads spin-wait.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from provenance import provenance
from segft.config import ModelConfig, PredictConfig, TrainConfig
from segft.data.patches import grid
from segft.inference import SlidingWindowSegmenter, window_stride
from segft.models import build_model
from segft.device import resolve_device
from segft.training import prepare_train_step

#: Steps of the original protocol at batch 4: (25 + 5 + 10 + 15 + 20 images) x 10 patches / 4 x 100 epochs.
PROTOCOL_STEPS = 18_750
MODELS = {"default": ModelConfig(), "paulow": ModelConfig(arch="paulow")}


@dataclass(frozen=True)
class TrainingSpeed:
    model: str
    mode: str
    precision: str
    batch_size: int
    step_ms: float
    steps_per_s: float
    patches_per_s: float
    protocol_minutes: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(config: ModelConfig, mode: str, autocast: bool, batch_size: int, steps: int, patch_size: int,
                  device: torch.device, warmup: int) -> float:
    """Mean seconds per training step (forward, dynamic loss, backward, Adam) after ``warmup`` untimed steps,
    set up exactly as ``segft.training.train`` sets it up (``prepare_train_step``)."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    train_config = TrainConfig(batch_size=batch_size, patch_size=patch_size, device=str(device), step=mode,
                               autocast="on" if autocast else "off", model=config)
    step = prepare_train_step(model, train_config, device)
    images = torch.rand(batch_size, 1, patch_size, patch_size, device=device)
    masks = (torch.rand(batch_size, 1, patch_size, patch_size, device=device) > 0.8).float()
    for index in range(warmup + steps):
        if index == warmup:
            synchronize(device)
            start = time.perf_counter()
        step(images, masks)
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training_variants(device: torch.device, compile_on_cpu: bool) -> list[tuple[str, bool]]:
    """(step mode, bfloat16 autocast) pairs worth timing on ``device``."""
    if device.type == "cuda":
        return [("eager", False), ("cuda_graph", False), ("eager", True), ("cuda_graph", True)]
    return [("eager", False)] + ([("compile", False)] if compile_on_cpu else [])


def measure_training(device: torch.device, steps: int, batches: tuple[int, ...], patch_size: int,
                     variants: list[tuple[str, bool]]) -> list[TrainingSpeed]:
    results = []
    for name, config in MODELS.items():
        for mode, autocast in variants:
            for batch_size in batches:
                # compiled steps: the first calls compile; CUDA graphs: 3 eager warm-up steps, then capture
                warmup = 2 if mode == "eager" else 5
                seconds = time_training(config, mode, autocast, batch_size, steps, patch_size, device, warmup)
                results.append(TrainingSpeed(name, mode, "bfloat16" if autocast else "float32", batch_size,
                                             1000 * seconds, 1 / seconds, batch_size / seconds,
                                             PROTOCOL_STEPS * 4 / batch_size * seconds / 60))
                print(f"  {name} {mode} {results[-1].precision} batch {batch_size}: {1000 * seconds:.1f} ms/step",
                      flush=True)
    return results


def measure_inference(device: torch.device, size: int, repeats: int, batch_size: int) -> list[dict]:
    """Whole-image segmentation of a ``size`` x ``size`` 16-bit image with the default model (random weights:
    speed does not depend on their values), one warm-up then ``repeats`` timed runs; MP/s from the median."""
    train = TrainConfig()
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device).eval()
    image = np.random.default_rng(0).integers(0, 65535, (size, size), dtype=np.uint16)
    precisions = {"float32": False, "bfloat16": True} if device.type == "cuda" else {"float32": False}
    rows = []
    for precision, autocast in precisions.items():
        segmenter = SlidingWindowSegmenter(model, train.patch_size, train.overlap, batch_size, device=device,
                                           autocast=autocast)
        segmenter(image)  # warm-up: allocations, cuDNN algorithm choice
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            segmenter(image)  # the mask comes back to the host, so all device work is included
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        rows.append({"precision": precision, "seconds": seconds, "median_s": median,
                     "megapixels_per_s": image.size / 1e6 / median,
                     "windows": len(grid(image.shape, train.patch_size, window_stride(train.patch_size,
                                                                                      train.overlap))[0])})
    return rows


def peak_memory(device: torch.device) -> dict[str, float]:
    memory = {"peak_resident_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        memory["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return f"{model or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def speedup_at_batch_4(results: list[TrainingSpeed], batch_size: int) -> float:
    """paulow's eager float32 step time over the default model's, at the protocol batch."""
    eager = {r.model: r.step_ms for r in results if (r.mode, r.precision, r.batch_size) == ("eager", "float32",
                                                                                              batch_size)}
    return eager["paulow"] / eager["default"]


def print_report(report: dict) -> None:
    print(f"device: {report['device_name']} ({report['device']}, {report['threads']} threads), "
          f"torch {report['torch']}, patch {report['patch_size']}")
    print(f"{'model':8} {'mode':10} {'precision':9} {'batch':>5} {'ms/step':>9} {'steps/s':>8} {'patches/s':>10} "
          f"{'protocol min':>13}")
    for m in report["training"]:
        print(f"{m['model']:8} {m['mode']:10} {m['precision']:9} {m['batch_size']:5d} {m['step_ms']:9.1f} "
              f"{m['steps_per_s']:8.2f} {m['patches_per_s']:10.1f} {m['protocol_minutes']:13.1f}")
    print(f"default model: {report['default_speedup_over_paulow']:.1f}x the training throughput of paulow "
          f"at batch {report['protocol_batch']} (eager, float32)")
    for row in report["inference"]:
        print(f"inference {report['image_size']} x {report['image_size']} ({row['windows']} windows), "
              f"{row['precision']}: {row['median_s']:.2f} s, {row['megapixels_per_s']:.2f} MP/s")
    print("peak memory: " + ", ".join(f"{k} {v:.0f}" for k, v in report["peak_memory"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row (default: 10)")
    parser.add_argument("--large-batch", type=int, default=0, help="default: 64 on CUDA, 16 on CPU")
    parser.add_argument("--compile", action="store_true",
                        help="on CPU also time --step compile (compiling takes a minute or two per model)")
    parser.add_argument("--size", type=int, default=2048, help="inference image side in pixels (default: 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference runs (default: 3)")
    parser.add_argument("--batch-size", type=int, default=PredictConfig().batch_size,
                        help="inference windows per forward pass (default: the pyfunc's)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: one per core)")
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps and a small image: checks it works")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest algorithms
    patch_size, steps, size, repeats = (32, 1, 256, 1) if args.smoke else (128, args.steps, args.size, args.repeats)
    batches = (2,) if args.smoke else (4, args.large_batch or (64 if device.type == "cuda" else 16))
    training = measure_training(device, steps, batches, patch_size, training_variants(device, args.compile))
    report = {
        **provenance("speed"),
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "patch_size": patch_size, "protocol_batch": batches[0],
        "training": [asdict(m) for m in training],
        "default_speedup_over_paulow": speedup_at_batch_4(training, batches[0]),
        "image_size": size, "inference": measure_inference(device, size, repeats, args.batch_size),
        "peak_memory": peak_memory(device),
    }
    print_report(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
