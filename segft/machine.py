"""What a run's numbers depend on besides its settings and data: PyTorch's thread count, the CPU and the code.

With the same seeds, training on 1 or 2 threads, or on a CPU whose kernels use other vector instructions, sums in
another order; training amplifies those rounding differences into other models (README, "Threads and results").
So the thread count is a setting (``TrainConfig.threads``), resolved once by the command that starts (the driver)
and carried down to every run and Ray worker in the config; the CPU and the code version are recorded on every
run (``run_params``); the thread count and the code version are part of a study's id and a base model's key.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from segft import schema
from segft.config import ExecutorConfig, TrainConfig

#: CPU flags (``/proc/cpuinfo``) that decide which kernels PyTorch and oneDNN run: x86 AVX2/FMA, AVX-512 and AMX;
#: Arm NEON (asimd), SVE and the bfloat16 and int8 matrix extensions.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
             "asimd", "sve", "sve2", "bf16", "i8mm")
CPUINFO = Path("/proc/cpuinfo")
#: Seconds a git call may take before the commit is left empty.
GIT_TIMEOUT_S = 10


def resolve_threads(threads: int, execution: ExecutorConfig | None = None) -> int:
    """The PyTorch thread count a run uses: ``threads`` when given (> 0); else, for a run in a Ray task, the
    task's CPUs (``cpus_per_run`` rounded down, at least 1); else this process's own count as the command starts
    (what torch chose: ``OMP_NUM_THREADS``, else the cores, unless the caller set another)."""
    if threads > 0:
        return threads
    if execution is not None and execution.executor == "ray":
        return max(1, math.floor(execution.cpus_per_run))
    return torch.get_num_threads()


def with_threads(config: TrainConfig, execution: ExecutorConfig | None = None) -> TrainConfig:
    """``config`` with its thread count resolved (``resolve_threads``): what the driver carries down, logs and keys."""
    return dataclasses.replace(config, threads=resolve_threads(config.threads, execution))


@dataclass(frozen=True)
class Machine:
    """The CPU a process runs on, as far as it decides PyTorch's kernels.

    Attributes:
        cpu_model: Model name (``/proc/cpuinfo``), else ``platform.processor()``.
        cpu_family: x86 family number; empty elsewhere.
        cpu_model_number: x86 model number (family and model tell CPU generations apart that share a name, such
            as virtual machines' "Intel Xeon Processor"); empty elsewhere.
        cpu_isa: The ``ISA_FLAGS`` the CPU has, comma-separated (``avx2,fma,avx512f,...``).
        torch_cpu_capability: The vector instruction set PyTorch's own kernels dispatch to (``DEFAULT``, ``AVX2``,
            ``AVX512``...; ``torch.backends.cpu.get_cpu_capability``).
    """

    cpu_model: str
    cpu_family: str
    cpu_model_number: str
    cpu_isa: str
    torch_cpu_capability: str

    def params(self) -> dict[str, str]:
        """As MLflow params, by their ``segft.schema`` names."""
        return {schema.CPU_MODEL_PARAM: self.cpu_model, schema.CPU_FAMILY_PARAM: self.cpu_family,
                schema.CPU_MODEL_NUMBER_PARAM: self.cpu_model_number, schema.CPU_ISA_PARAM: self.cpu_isa,
                schema.TORCH_CPU_CAPABILITY_PARAM: self.torch_cpu_capability}


def parse_cpuinfo(text: str) -> Machine:
    """The first processor's entry of ``/proc/cpuinfo`` text as a ``Machine`` (torch's capability included)."""
    entry: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            entry.setdefault(key.strip(), value.strip())
    flags = set((entry.get("flags") or entry.get("Features", "")).split())
    return Machine(cpu_model=entry.get("model name", "") or platform.processor() or "unknown",
                   cpu_family=entry.get("cpu family", ""), cpu_model_number=entry.get("model", ""),
                   cpu_isa=",".join(flag for flag in ISA_FLAGS if flag in flags),
                   torch_cpu_capability=torch.backends.cpu.get_cpu_capability())


@functools.lru_cache(maxsize=1)
def this_machine() -> Machine:
    """This process's ``Machine`` (read once per process)."""
    try:
        text = CPUINFO.read_text()
    except OSError:  # not Linux
        text = ""
    return parse_cpuinfo(text)


@dataclass(frozen=True)
class CodeVersion:
    """The segft code a process runs.

    Attributes:
        version: The installed package's version (``importlib.metadata``); empty when it is not installed.
        commit: The git commit of the checkout the package runs from; empty when it does not run from a checkout
            (an installed wheel) or git is missing.
        dirty: Tracked files of that checkout have uncommitted changes.
    """

    version: str
    commit: str = ""
    dirty: bool = False

    @property
    def key(self) -> str:
        """What study ids and base keys include: version and commit, never the dirty flag (uncommitted changes
        are not keyed: editing the code would otherwise give every start a new id and train everything again)."""
        return f"{self.version}+{self.commit}"

    def params(self) -> dict[str, str]:
        """As MLflow params: the version, and the commit with ``-dirty`` when the checkout had changes."""
        return {schema.CODE_VERSION_PARAM: self.version,
                schema.GIT_COMMIT_PARAM: self.commit + ("-dirty" if self.dirty else "")}


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder args`` stdout, stripped; None when git is missing, fails or hangs."""
    try:
        completed = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                   timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> CodeVersion:
    """This process's ``CodeVersion`` (git is asked once per process). Never fails."""
    try:
        version = importlib.metadata.version("segft")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    package = Path(__file__).resolve().parent
    # the package must be tracked in the checkout git finds: a virtualenv inside a checkout is not one
    if not _git(package, "ls-files", "--", "__init__.py"):
        return CodeVersion(version)
    commit = _git(package, "rev-parse", "HEAD") or ""
    changes = _git(package, "status", "--porcelain", "--untracked-files=no")
    return CodeVersion(version, commit, bool(commit and changes))


def software_params() -> dict[str, str]:
    """What else a report needs to say where a run ran: the PyTorch version, the CPU cores this process may use
    and the GPU (``none`` without CUDA)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {schema.TORCH_VERSION_PARAM: torch.__version__, schema.CPU_CORES_PARAM: str(cores), schema.GPU_PARAM: gpu}


def run_params() -> dict[str, str]:
    """The machine and code facts every run logs (the thread count is logged with the settings)."""
    return {**this_machine().params(), **software_params(), **code_version().params()}
