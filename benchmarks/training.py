"""Training throughput of the default model and of the original study's network (``arch=paulow``), in one run.

Measures, on whatever device is present (CUDA if available, else CPU): optimizer steps per second and patches per
second at batch 4 (the protocol) and at a large batch, the projected pure-compute time of the original protocol
(base training plus fine-tuning with 5/10/15/20 images, 100 epochs each: 18,750 steps at batch 4), and peak
memory. Prints a table and writes JSON. Not a test: ``tests/test_benchmarks.py`` only runs ``--smoke``.

    python benchmarks/training.py --out benchmarks/results/training-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import asdict, dataclass

import torch

from segft.config import ModelConfig
from segft.losses import DynamicLoss
from segft.models import build_model
from segft.training import resolve_device

#: Steps of the original protocol at batch 4: (25 + 5 + 10 + 15 + 20 images) x 10 patches / 4 x 100 epochs.
PROTOCOL_STEPS = 18_750
MODELS = {"default": ModelConfig(), "paulow": ModelConfig(arch="paulow")}


@dataclass(frozen=True)
class Measurement:
    model: str
    batch_size: int
    step_ms: float
    steps_per_s: float
    patches_per_s: float
    protocol_minutes: float


def measure_training(config: ModelConfig, batch_size: int, steps: int, patch_size: int, device: torch.device) -> float:
    """Mean seconds per training step (forward, dynamic loss, backward, Adam), after two warm-up steps."""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_fn = DynamicLoss()
    images = torch.rand(batch_size, 1, patch_size, patch_size, device=device)
    masks = (torch.rand(batch_size, 1, patch_size, patch_size, device=device) > 0.8).float()
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss, _ = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--large-batch", type=int, default=0, help="0: 64 on CUDA, 32 on CPU")
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps: checks the script runs")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    patch_size, steps = (32, 1) if args.smoke else (128, args.steps)
    large = args.large_batch or (64 if device.type == "cuda" else 32)
    batches = (2,) if args.smoke else (4, large)
    results = []
    for name, config in MODELS.items():
        for batch_size in batches:
            seconds = measure_training(config, batch_size, steps, patch_size, device)
            results.append(Measurement(name, batch_size, 1000 * seconds, 1 / seconds, batch_size / seconds,
                                       PROTOCOL_STEPS * 4 / batch_size * seconds / 60))
    by_key = {(m.model, m.batch_size): m for m in results}
    speedup = by_key[("paulow", batches[0])].step_ms / by_key[("default", batches[0])].step_ms
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "patch_size": patch_size,
        "measurements": [asdict(m) for m in results],
        "default_speedup_over_paulow_at_batch_4": speedup,
        "peak_memory_mb": peak_memory_mb(device),
    }
    print(f"device: {report['device']} ({device.type}, {report['threads']} threads), patch {patch_size}")
    print(f"{'model':8} {'batch':>5} {'ms/step':>9} {'steps/s':>8} {'patches/s':>10} {'protocol min':>13}")
    for m in results:
        print(f"{m.model:8} {m.batch_size:5d} {m.step_ms:9.1f} {m.steps_per_s:8.2f} {m.patches_per_s:10.1f} "
              f"{m.protocol_minutes:13.1f}")
    print(f"default model is {speedup:.1f}x faster than paulow at batch {batches[0]}; "
          f"peak memory {report['peak_memory_mb']:.0f} MB")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
