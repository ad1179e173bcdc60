"""The benchmarks run (smoke mode); their timings are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def run_smoke(script: str, out: Path) -> tuple[dict, str]:
    """Run ``benchmarks/<script>`` in smoke mode on the CPU; return its JSON report and what it printed."""
    completed = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / script), "--smoke", "--device", "cpu",
                                "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text()), completed.stdout


def test_inference_benchmark_smoke(tmp_path):
    report, stdout = run_smoke("inference.py", tmp_path / "inference.json")
    assert report["image"] == [256, 256] and report["device"] == "cpu" and report["windows"] == 9
    assert [row["precision"] for row in report["results"]] == ["float32"]
    assert report["results"][0]["megapixels_per_s"] > 0
    assert "MP/s" in stdout


def test_training_benchmark_smoke(tmp_path):
    report, stdout = run_smoke("training.py", tmp_path / "training.json")
    assert [(m["model"], m["batch_size"]) for m in report["measurements"]] == [("default", 2), ("paulow", 2)]
    assert all(m["steps_per_s"] > 0 and m["protocol_minutes"] > 0 for m in report["measurements"])
    assert report["peak_memory_mb"] > 0 and "faster than paulow" in stdout
