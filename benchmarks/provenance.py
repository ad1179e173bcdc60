"""Where a results file came from: the command, the commit, the machine and the date (written into every
``benchmarks/results/*.json`` so that a reader can tell which CPU and which code produced a number), and a digest
of the code its numbers depend on (``CODE``), so that ``tests/test_readme.py`` fails when that code has changed
since the file was made: a README number can then never outlive the code that produced it.

The CPU and code facts are ``segft.machine``'s, the same every MLflow run logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from segft import machine, schema

ROOT = Path(__file__).resolve().parents[1]

#: The code each kind of results file depends on: a path ending in ``/`` stands for every ``.py`` file under it,
#: one starting with ``!`` is left out. A study's numbers depend on all of segft that computes (data, model, loss,
#: training, evaluation, study, settings) and on the statistics. A choice of defaults builds its settings
#: explicitly, so the presets, defaults and command line it leads to (written after it) are not part of its code.
#: Speed and memory depend only on what they time or measure.
#: What a run logs and where it runs, not what it computes: no results file depends on these.
#: (``segft/tracking.py`` is the adapter before it became the package ``segft/tracking/``: older commits hold it.)
_PLUMBING = ("!segft/tracking/", "!segft/tracking.py", "!segft/executor.py", "!segft/urls.py", "!segft/mlproject.py",
             "!segft/pyfunc.py", "!segft/predict.py", "!segft/strips.py", "!segft/overlays.py")
_STUDY = ("segft/", *_PLUMBING, "analysis/summary.py", "analysis/query.py", "benchmarks/study_results.py",
          "benchmarks/executor_speed.py")
CODE = {
    "study": _STUDY,
    "choice": ("segft/", *_PLUMBING, "!segft/presets.py", "!segft/config.py", "!segft/cli.py",
               "benchmarks/choose_defaults.py"),
    "speed": ("segft/models/", "segft/losses/", "segft/data/patches.py", "segft/data/normalize.py",
              "segft/train_step.py", "segft/training.py", "segft/inference.py", "benchmarks/speed.py"),
    "intervals": ("analysis/summary.py", "benchmarks/interval_coverage.py"),
    # gathers study files (each checked against the study code) into one table: their code and its own
    "robustness": (*_STUDY, "benchmarks/robustness.py"),
    "predict": ("segft/models/", "segft/data/readers.py", "segft/data/normalize.py", "segft/data/patches.py",
                "segft/data/bands.py", "segft/inference.py", "segft/predict.py", "segft/strips.py", "segft/pyfunc.py",
                "segft/checkpoint.py", "benchmarks/predict_memory.py"),
}


def selected(paths: list[str], code: tuple[str, ...]) -> list[str]:
    """The ``paths`` that ``code`` (a ``CODE`` entry) names, sorted."""
    def names(path: str, entry: str) -> bool:
        return path == entry or (entry.endswith("/") and path.startswith(entry) and path.endswith(".py"))

    left_out = [c[1:] for c in code if c.startswith("!")]
    return sorted({p for p in paths if any(names(p, c) for c in code if not c.startswith("!"))
                   and not any(names(p, c) for c in left_out)})


def code_digest(code: tuple[str, ...], commit: str | None = None) -> str:
    """SHA-256 of the paths and contents of the files ``code`` names: in the working tree, or at ``commit``
    (read with git).

    Raises:
        OSError: If ``commit`` is given and git cannot read it.
    """
    if commit is None:
        paths = [p.relative_to(ROOT).as_posix() for c in code if not c.startswith("!")
                 for p in ((ROOT / c).rglob("*.py") if c.endswith("/") else [ROOT / c]) if p.is_file()]
        read = lambda path: (ROOT / path).read_bytes()  # noqa: E731
    else:
        def git(*args: str) -> bytes:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True)
            if done.returncode:
                raise OSError(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
            return done.stdout
        paths = git("ls-tree", "-r", "--name-only", commit).decode().splitlines()
        read = lambda path: git("show", f"{commit}:{path}")  # noqa: E731
    digest = hashlib.sha256()
    for path in selected(paths, code):
        digest.update(path.encode() + b"\0" + read(path) + b"\0")
    return digest.hexdigest()


def provenance(code: str) -> dict[str, object]:
    """The command line, commit, machine (CPU model, family and model numbers, vector instruction sets, torch's
    CPU capability, cores, torch threads, GPU), segft's version, the UTC date of this process, and the digest of
    the ``CODE[code]`` files its numbers depend on."""
    cpu, code_version = machine.this_machine(), machine.code_version()
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "code": code,
        "code_digest": code_digest(CODE[code]),
        "commit": code_version.params()[schema.GIT_COMMIT_PARAM] or "unknown",
        "code_version": code_version.version,
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


#: Certificates of changes that moved no number (``benchmarks/equivalence.py``).
EQUIVALENCES = ROOT / "benchmarks" / "results" / "equivalences.json"


def load_certificates() -> list[dict]:
    return json.loads(EQUIVALENCES.read_text()) if EQUIVALENCES.exists() else []


def accepted_digests(kind: str, digest: str, certificates: list[dict]) -> set[str]:
    """Every digest of ``kind``'s code that certificates lead to from ``digest`` (itself included)."""
    reached, frontier = {digest}, [digest]
    while frontier:
        current = frontier.pop()
        for certificate in certificates:
            step = certificate["digests"].get(kind)
            if step and step["from"] == current and step["to"] not in reached:
                reached.add(step["to"])
                frontier.append(step["to"])
    return reached


def stale_reason(record: dict, name: str) -> str | None:
    """Why the results file ``name`` (its JSON ``record``) no longer matches the code, or None when it does.

    A file records the digest of the code it depends on (``provenance``); an older file without one is compared
    through git: the same files at its recorded commit against the working tree (a ``-dirty`` commit cannot be).
    A change certified to move no number (``EQUIVALENCES``, made by ``benchmarks/equivalence.py``) is not one.
    """
    code = record.get("code") or next((kind for kind in CODE if name.startswith(kind)), "study")
    now = code_digest(CODE[code])
    if "code_digest" in record:
        then = record["code_digest"]
    elif record.get("commit", "unknown").endswith(("-dirty", "unknown")):
        return f"{name} was made at {record.get('commit')} from uncommitted code, and records no code digest"
    else:
        then = code_digest(CODE[code], record["commit"])
    if now not in accepted_digests(code, then, load_certificates()):
        return (f"{name} was made with other {code} code ({', '.join(CODE[code])}) than the working tree has: "
                "regenerate it (benchmarks/regenerate_results.sh), or, for a change that should move no number, certify "
                "that it does not (benchmarks/equivalence.py)")
    return None
