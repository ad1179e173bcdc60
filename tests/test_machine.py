"""Reproducibility recorded, not hoped for (issue 20): the thread count is a setting resolved once, and the CPU and
the code version are read without ever failing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segft import executor, machine, schema, tracking
from segft.config import ExecutorConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RAY = ExecutorConfig(executor="ray", cpus_per_run=2.5)

THREAD_CASES = [  # (threads, execution, expected; None = this process's count)
    ("0 in process", 0, None, None),
    ("0 with the local executor", 0, ExecutorConfig(), None),
    ("0 on ray, 2.5 cpus", 0, RAY, 2),
    ("0 on ray, half a cpu", 0, ExecutorConfig(executor="ray", cpus_per_run=0.5), 1),
    ("explicit in process", 3, None, 3),
    ("explicit on ray", 3, RAY, 3),
]


@pytest.mark.parametrize("name, threads, execution, expected", THREAD_CASES, ids=[c[0] for c in THREAD_CASES])
def test_resolve_threads(name, threads, execution, expected):
    assert machine.resolve_threads(threads, execution) == (expected or torch.get_num_threads())


def test_with_threads_resolves_the_config_and_keeps_the_rest():
    config = TrainConfig(seed=3)
    assert machine.with_threads(config, RAY) == TrainConfig(seed=3, threads=2)
    assert machine.with_threads(TrainConfig(threads=5), RAY).threads == 5


def test_negative_threads_are_refused():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        TrainConfig(threads=-1)


def test_threads_is_logged_once_with_the_settings_and_no_machine_param_overwrites_a_setting():
    settings = tracking.flatten_config(TrainConfig(threads=2))
    assert settings[schema.THREADS_PARAM] == 2
    assert not set(machine.run_params()) & set(settings)


X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8

processor\t: 1
model name\t: another entry, not read
"""
ARM = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm sve sve2 bf16 i8mm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, model, family, number, isa", [
    (X86, "Intel(R) Xeon(R) Platinum 8480+", "6", "143",
     "avx2,fma,avx512f,avx512dq,avx512bw,avx512vl,avx512_vnni,avx512_bf16,amx_tile,amx_bf16,amx_int8"),
    (ARM, None, "", "", "asimd,sve,sve2,bf16,i8mm"),
    ("", None, "", "", ""),
], ids=["x86 with amx", "arm", "no cpuinfo"])
def test_parse_cpuinfo(text, model, family, number, isa):
    found = machine.parse_cpuinfo(text)
    assert (found.cpu_family, found.cpu_model_number, found.cpu_isa) == (family, number, isa)
    assert found.cpu_model == model if model else found.cpu_model  # else platform.processor(), or "unknown"
    assert found.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()


def test_this_machine_and_its_params():
    found = machine.this_machine()
    assert found.cpu_model and found.torch_cpu_capability
    assert found.params() == {schema.CPU_MODEL_PARAM: found.cpu_model, schema.CPU_FAMILY_PARAM: found.cpu_family,
                              schema.CPU_MODEL_NUMBER_PARAM: found.cpu_model_number,
                              schema.CPU_ISA_PARAM: found.cpu_isa,
                              schema.TORCH_CPU_CAPABILITY_PARAM: found.torch_cpu_capability}


@pytest.fixture
def fresh_code_version():
    """``code_version`` asked again (it is cached per process), and forgotten after the test."""
    machine.code_version.cache_clear()
    yield machine.code_version
    machine.code_version.cache_clear()


def test_code_version_of_this_checkout(fresh_code_version):
    code = fresh_code_version()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    changes = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", code.commit) and code.commit == head
    assert code.dirty == bool(changes) and code.version
    assert code.params() == {schema.CODE_VERSION_PARAM: code.version,
                             schema.GIT_COMMIT_PARAM: head + ("-dirty" if changes else "")}


def test_the_dirty_flag_is_logged_but_not_keyed():
    clean, dirty = machine.CodeVersion("1.0", "abc"), machine.CodeVersion("1.0", "abc", dirty=True)
    assert clean.key == dirty.key != machine.CodeVersion("1.0", "abd").key != machine.CodeVersion("1.1", "abc").key
    assert dirty.params()[schema.GIT_COMMIT_PARAM] == "abc-dirty" and clean.params()[schema.GIT_COMMIT_PARAM] == "abc"


def test_code_version_without_git_or_outside_a_checkout_is_empty_never_an_error(fresh_code_version, monkeypatch,
                                                                                tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git
    assert fresh_code_version().commit == ""
    monkeypatch.undo()
    fresh_code_version.cache_clear()
    # a package inside a checkout that does not track it (a virtualenv in a repository): not its commit
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages" / "segft").mkdir(parents=True)
    (tmp_path / "site-packages" / "segft" / "__init__.py").touch()
    monkeypatch.setattr(machine, "__file__", str(tmp_path / "site-packages" / "segft" / "machine.py"))
    assert (fresh_code_version().commit, fresh_code_version().dirty) == ("", False)


def test_the_git_call_is_made_once_per_process(fresh_code_version, monkeypatch):
    calls = []
    real = machine._git
    monkeypatch.setattr(machine, "_git", lambda *args: calls.append(args) or real(*args))
    first = fresh_code_version()
    assert fresh_code_version() is first and len(calls) == 3  # ls-files, rev-parse, status


def test_provenance_records_the_machine_and_code_facts():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from provenance import CODE, code_digest, provenance
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    record = provenance("speed")
    assert record["code"] == "speed" and record["code_digest"] == code_digest(CODE["speed"])
    facts = machine.this_machine().params()
    assert record["machine"]["cpu"] == facts.pop(schema.CPU_MODEL_PARAM)
    assert facts.items() <= record["machine"].items()
    assert record["commit"] == machine.code_version().params()[schema.GIT_COMMIT_PARAM]
    assert record["code_version"] == machine.code_version().version


class _FakeRay:
    """Just enough of Ray to see what a task is submitted with: ``ray.remote(f).options(...).remote(*args)``."""

    arguments: tuple = ()

    def remote(self, function):
        return self

    def options(self, **options):
        return _Submit(self)


class _Submit:
    def __init__(self, ray: _FakeRay):
        self.ray = ray

    def remote(self, *arguments):
        self.ray.arguments = arguments


def test_ray_tasks_get_the_sessions_resolved_thread_count():
    fake = _FakeRay()
    executor.RaySession(fake, RAY, destination=None, threads=3).submit("task", print, "argument")
    _destination, _session_id, threads, function, *arguments = fake.arguments
    assert (threads, function, arguments) == (3, print, ["argument"])
