"""The one GPU check: everything a lent GPU should measure, in one call, into one JSON (issue 15).

Steps, each recorded with its wall time (a step that fails is recorded with its error and the check goes on):

1. ``tests``: the tests that need CUDA (CUDA-graph steps, bfloat16 autocast, device resolution), run with pytest;
2. ``speed``: ``benchmarks/speed.py`` (eager vs CUDA graph, float32 vs bfloat16, steps/s, inference MP/s, peak memory);
3. ``protocol_study``: the original protocol (100 epochs, batch 4, lr 1e-5) on the built-in data, one repeat of
   the fine-tuning arm (a base model, then 5/10/15/20 images), sequential, evaluation and logging included, into a
   fresh tracking store; goal: at most 60 s wall on one H100;
4. ``protocol_study_ray``: the same study on a local Ray instance, a quarter of the GPU per run (the four
   fine-tunes at once, each in its own process with its own CUDA graph and stream; one CPU per run without a
   GPU), with its speed-up over the sequential study and the largest per-run Dice difference;
5. ``bf16_inference``: the fine-tuned model of the largest size segments Dataset 2's test images in float32 and
   under bfloat16 autocast: both Dice means, the largest per-image Dice difference and the share of pixels whose
   mask differs; this decides whether ``autocast=auto`` may become the default.

``--smoke`` runs every step with tiny settings on whatever device is present (CPU in CI): 2 epochs of the quick
preset on a 4 + 4 image study, ``speed.py --smoke``, no pytest run (the suite that calls it is that run).

    bash benchmarks/gpu_check.sh                     # on a GPU machine: writes benchmarks/results/gpu-check-<gpu>.json
    bash benchmarks/gpu_check.sh --smoke --out /tmp/gpu-check.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from provenance import ROOT, provenance

#: The tests that exercise CUDA paths (they skip without a GPU).
GPU_TESTS = ["tests/test_train_step.py", "tests/test_training.py", "tests/test_inference.py", "tests/test_pyfunc.py"]
#: The protocol study's wall-time goal on one H100 (issue 15).
PROTOCOL_GOAL_S = 60


def run_step(name: str, function, results: dict) -> None:
    """Run one step, recording its result and wall time, or its error: one failing step does not stop the check."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        results[name] = {"ok": True, **function()}
    except Exception as error:  # noqa: BLE001 - the check records every failure and goes on
        results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                         "traceback": traceback.format_exc()[-3000:]}
    results[name]["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"   {name}: {'ok' if results[name]['ok'] else results[name]['error']} ({results[name]['wall_s']} s)",
          flush=True)


def gpu_tests() -> dict:
    completed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TESTS],
                               cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = (completed.stdout.strip().splitlines() or [""])[-1]
    counts = {kind: int(number) for number, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    if completed.returncode != 0:
        raise RuntimeError(f"pytest failed: {summary}\n{completed.stdout[-2000:]}")
    return {"summary": summary, **counts}


def speed(smoke: bool, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--device", device, "--out", str(out)]
        completed = subprocess.run(command + (["--smoke"] if smoke else []), cwd=ROOT, capture_output=True,
                                   text=True, timeout=1200)
        if completed.returncode != 0:
            raise RuntimeError(completed.stderr[-2000:])
        report = json.loads(out.read_text())
    return {key: report[key] for key in ("device_name", "training", "default_speedup_over_paulow", "image_size",
                                         "inference", "peak_memory")}


def protocol_study(smoke: bool, device: str, work: Path, executor: list[str] = ()) -> dict:
    """The protocol's fine-tuning arm, one repeat, in a fresh store under ``work``: sequential, or with the
    ``executor`` flags (``--executor ray ...``)."""
    from segft.cli import build_parser, study_config_from_args
    from segft.study import run_study

    work.mkdir(parents=True, exist_ok=True)
    argv = ["study", "--preset", "protocol", "--arms", "finetune", "--repeats", "1", "--device", device,
            "--report-dir", str(work / "report"), "--system-metrics", "false", *executor]
    if smoke:
        from segft.data.synthetic import make_microtube_study, write_study

        data = write_study(make_microtube_study(n_images=4), work / "data")
        argv += ["--data-dir", str(data), "--epochs", "2", "--sizes", "1,2", "--patch-size", "64",
                 "--dataset1-train-images", "3", "--dataset2-pool-images", "3"]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    config = study_config_from_args(build_parser().parse_args(argv))
    start = time.perf_counter()
    result = run_study(config)
    wall_s = time.perf_counter() - start
    largest = max(config.sizes)
    return {
        "segft_command": "segft " + " ".join(argv),
        "data_dir": str(config.train.data_dir),
        "split": [config.train.split.dataset1_train_images, config.train.split.dataset2_pool_images],
        "wall_s": round(wall_s, 1),
        "goal_s": PROTOCOL_GOAL_S,
        "runs": {key: run.test_metrics for key, run in result.runs.items()},
        "largest_model": result.runs[f"finetune/n{largest}/r0"].model_uri,
        "store": str(work),
    }


def ray_flags(device: str) -> list[str]:
    """A quarter of the GPU per run on CUDA (the four fine-tunes of a repeat share it), one CPU per run on CPU."""
    return ["--executor", "ray", "--cpus-per-run", "1", *(["--gpus-per-run", "0.25"] if device.startswith("cuda") else [])]


def protocol_study_on_ray(smoke: bool, device: str, work: Path, sequential: dict) -> dict:
    """The same study as Ray tasks, each in its own process (its own CUDA context, graph and stream), against the
    sequential one: wall time and the largest per-run test Dice difference (floating-point order only)."""
    report = protocol_study(smoke, "auto" if device.startswith("cuda") else device, work, ray_flags(device))
    differences = [abs(value - sequential["runs"][key][metric])
                   for key, metrics in report["runs"].items() for metric, value in metrics.items()]
    return {**report, "speedup_over_sequential": round(sequential["wall_s"] / report["wall_s"], 2),
            "max_abs_dice_difference": max(differences)}


def bf16_inference(study: dict, device: str) -> dict:
    """Dice of Dataset 2's test images with the model in float32 and under bfloat16 autocast."""
    import mlflow

    from segft.config import SplitConfig
    from segft.data.split import load_data, split_study
    from segft.metrics import confusion_counts

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(study['store']) / 'mlflow.db'}"
    split = split_study(load_data(study["data_dir"]), SplitConfig(*study["split"]))
    test = split.test_dataset2
    masks = {}
    for autocast in ("off", "on"):
        model = mlflow.pyfunc.load_model(study["largest_model"], model_config={"device": device, "autocast": autocast})
        masks[autocast] = [model.predict(image) > 0 for image in test.images]
    dice = {autocast: [confusion_counts(m, truth).dice for m, truth in zip(found, test.masks)]
            for autocast, found in masks.items()}
    differing = sum(int((a != b).sum()) for a, b in zip(masks["off"], masks["on"]))
    return {
        "images": len(test),
        "dice_float32": float(np.mean(dice["off"])),
        "dice_bfloat16": float(np.mean(dice["on"])),
        "max_abs_dice_difference": float(max(abs(a - b) for a, b in zip(dice["off"], dice["on"]))),
        "differing_pixel_share": differing / sum(mask.size for mask in test.masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings on any device (CPU in CI)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, help="JSON to write (default: benchmarks/results/gpu-check-<gpu>.json)")
    args = parser.parse_args()

    from segft.device import resolve_device

    device = str(resolve_device(args.device))
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-check-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.json"
    results: dict = {**provenance("speed"), "smoke": args.smoke, "device": device, "device_name": name}
    if args.smoke:
        results["tests"] = {"ok": True, "skipped": "smoke mode: the test suite that runs it is the test run"}
    else:
        run_step("tests", gpu_tests, results)
    run_step("speed", lambda: speed(args.smoke, device), results)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_step("protocol_study", lambda: protocol_study(args.smoke, device, work / "sequential"), results)
        if results["protocol_study"]["ok"]:
            run_step("protocol_study_ray", lambda: protocol_study_on_ray(args.smoke, device, work / "ray",
                                                                         results["protocol_study"]), results)
            run_step("bf16_inference", lambda: bf16_inference(results["protocol_study"], device), results)
    results["ok"] = all(step.get("ok", True) for step in results.values() if isinstance(step, dict))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps({key: value for key, value in results.items() if key not in ("speed",)}, indent=1,
                     default=str)[:6000])
    print(f"-> {out}")
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
