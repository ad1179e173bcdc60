"""Where a results file came from: the command, the commit, the machine and the date (written into every
``benchmarks/results/*.json`` so that a reader can tell which CPU and which code produced a number).

The CPU and code facts are ``segft.machine``'s, the same every MLflow run logs.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from segft import machine, schema

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> dict[str, object]:
    """The command line, commit, machine (CPU model, family and model numbers, vector instruction sets, torch's
    CPU capability, cores, torch threads, GPU), segft's version and the UTC date of this process."""
    cpu, code = machine.this_machine(), machine.code_version()
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": code.params()[schema.GIT_COMMIT_PARAM] or "unknown",
        "code_version": code.version,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu.cpu_model,
            **{name: value for name, value in cpu.params().items() if name != schema.CPU_MODEL_PARAM},
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
