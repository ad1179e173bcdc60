"""The speed and predict-memory benchmarks run (smoke mode); their figures are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.json"
    completed = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "speed.py"), "--smoke", "--device", "cpu",
                                "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = [(m["model"], m["mode"], m["precision"], m["batch_size"]) for m in report["training"]]
    assert rows == [("default", "eager", "float32", 2), ("paulow", "eager", "float32", 2)]
    assert all(m["steps_per_s"] > 0 and m["protocol_minutes"] > 0 for m in report["training"])
    assert report["default_speedup_over_paulow"] > 0
    [inference] = report["inference"]
    assert (report["image_size"], inference["windows"], inference["precision"]) == (256, 9, "float32")
    assert inference["megapixels_per_s"] > 0 and report["peak_memory"]["peak_resident_mb"] > 0
    assert "training throughput of paulow" in completed.stdout and "MP/s" in completed.stdout


def test_predict_memory_benchmark_smoke(tmp_path):
    out = tmp_path / "memory.json"
    completed = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "predict_memory.py"), "--smoke",
                                "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["side"], row["image_bytes"], row["windows"]) for row in report["sizes"]] == [(64, 64**2, 1),
                                                                                            (256, 256**2, 9)]
    assert report["baseline_rss_mb"] > 0 and all(row["peak_rss_mb"] > 0 for row in report["sizes"])
    assert report["criterion"]["rule"] == "peak(256²) <= 2 x peak(64²) + image bytes(256²)"
    assert {"command", "commit", "date", "machine"} <= report.keys()


def test_gpu_check_smoke_runs_every_step_on_cpu(tmp_path):
    """``benchmarks/gpu_check.sh --smoke``: the check a lent GPU runs first works end to end (tiny, on CPU)."""
    out = tmp_path / "gpu-check.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    completed = subprocess.run(["bash", str(PROJECT / "benchmarks" / "gpu_check.sh"), "--smoke", "--device", "cpu",
                                "--out", str(out)], capture_output=True, text=True, timeout=600, env=env,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["smoke"] and report["device"] == "cpu"
    assert report["speed"]["inference"][0]["megapixels_per_s"] > 0
    study = report["protocol_study"]
    assert study["wall_s"] > 0 and set(study["runs"]) == {"base/r0", "finetune/n1/r0", "finetune/n2/r0"}
    on_ray = report["protocol_study_ray"]
    assert on_ray["runs"].keys() == study["runs"].keys() and "--executor ray" in on_ray["segft_command"]
    # not bitwise: one thread per Ray task sums in another order than this process's threads (tests/test_executor.py
    # shows equality at equal thread counts)
    assert 0 <= on_ray["max_abs_dice_difference"] < 0.05 and on_ray["speedup_over_sequential"] > 0
    bf16 = report["bf16_inference"]
    assert bf16["images"] == 1 and 0 <= bf16["differing_pixel_share"] <= 1
    assert {"command", "commit", "date", "machine"} <= report.keys()
    assert not list(tmp_path.glob("mlflow.db")) and not (PROJECT / "benchmarks" / "results" / "gpu-check-cpu.json").exists()
