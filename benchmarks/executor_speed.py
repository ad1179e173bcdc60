"""Wall time of one study run in process and on Ray, on the same machine in the same call, and how far apart
their per-run results are.

Each executor runs ``python -m segft study --preset quick --arms finetune,threshold`` (the README's quickstart study)
as a fresh process in a fresh folder with its own SQLite store, one after the other (never at once):

- ``local``: in process, one run after the other, PyTorch on all cores (what a user gets by default);
- ``local-1-thread``: the same with one PyTorch thread (``OMP_NUM_THREADS=1``): what each Ray task gets;
- ``ray``: a local Ray instance, each run a task asking for ``--cpus-per-run`` CPUs (one PyTorch thread per
  CPU), so ``cores / cpus_per_run`` runs train at once.

Per-run test Dice of ``ray`` is compared run by run with both local studies. Against ``local-1-thread`` it should
be identical (same seeds, same thread count: the executor changes nothing). Against ``local`` it need not be: one
thread sums a convolution in another order than two, and training amplifies that difference.

    python benchmarks/executor_speed.py --out benchmarks/results/executor-cpu.json
    python benchmarks/executor_speed.py --smoke      # a tiny study: checks that it works
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import ROOT, provenance

QUICKSTART = ["study", "--preset", "quick", "--arms", "finetune,threshold"]
#: A study of seconds for ``--smoke`` (the tiny configuration of the tests).
SMOKE = ["--epochs", "1", "--patch-size", "64", "--decoder-channels", "16,8,8,4", "--dataset1-train-images", "3",
         "--dataset2-pool-images", "3", "--sizes", "1,2", "--repeats", "2"]


def run_study(arguments: list[str], folder: Path, environment: dict[str, str]) -> float:
    """Run ``segft <arguments>`` in ``folder`` (its own store) on this checkout's code, with ``environment`` on top
    of this process's; its wall seconds.

    Raises:
        RuntimeError: If the study fails (with the end of its output).
    """
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **environment}
    log = folder / "study.log"
    started = time.perf_counter()
    with log.open("w") as output:
        completed = subprocess.run([sys.executable, "-m", "segft", *arguments, "--report-dir", str(folder / "report")],
                                   cwd=folder, env=env, stdout=output, stderr=output, start_new_session=True)
    wall = time.perf_counter() - started
    if completed.returncode:
        raise RuntimeError(f"segft {' '.join(arguments)} failed ({completed.returncode}):\n{log.read_text()[-3000:]}")
    return wall


def test_dice(folder: Path) -> dict[str, dict[str, float]]:
    """``{run key: {test_dice_<dataset>: value}}`` of every finished child run in ``folder``'s store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "attributes.status = 'FINISHED'")
    return {run.data.tags["segft.run_key"]: {k: v for k, v in run.data.metrics.items() if k.startswith("test_dice")}
            for run in runs if "segft.run_key" in run.data.tags}


def compare(ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]) -> dict[str, object]:
    """How many per-run Dice values of two studies are identical, and the largest difference."""
    if ours.keys() != theirs.keys():
        raise RuntimeError(f"the studies ran different runs: {sorted(ours.keys() ^ theirs.keys())}")
    differences = [abs(ours[key][metric] - theirs[key][metric]) for key in ours for metric in ours[key]]
    return {"values_compared": len(differences), "identical": sum(d == 0 for d in differences),
            "max_abs_difference": max(differences, default=0.0)}


def measure(study: list[str], cpus_per_run: float, folder: Path) -> dict:
    executors = {"local": ([], {}), "local-1-thread": ([], {"OMP_NUM_THREADS": "1"}),
                 "ray": (["--executor", "ray", "--cpus-per-run", str(cpus_per_run)], {})}
    rows, dice = [], {}
    for name, (flags, environment) in executors.items():
        where = folder / name
        where.mkdir()
        wall = run_study([*study, *flags], where, environment)
        dice[name] = test_dice(where)
        means = {dataset: sum(d[f"test_dice_{dataset}"] for d in dice[name].values()) / len(dice[name])
                 for dataset in ("dataset1", "dataset2")}
        rows.append({"executor": name, "flags": " ".join([*(f"{k}={v}" for k, v in environment.items()), *flags]),
                     "wall_s": round(wall, 1), "runs": len(dice[name]), "mean_test_dice": means})
        print(f"{name}: {wall:.1f} s for {len(dice[name])} runs, mean test Dice {means}", flush=True)
    walls = {row["executor"]: row["wall_s"] for row in rows}
    cores = os.cpu_count() or 1
    return {"segft_command": "segft " + " ".join(study), "cpus_per_run": cpus_per_run,
            "concurrent_runs": max(1, int(cores // cpus_per_run)), "executors": rows,
            "speedup": round(walls["local"] / walls["ray"], 2),
            "speedup_over_1_thread": round(walls["local-1-thread"] / walls["ray"], 2),
            "dice": {"ray_vs_local_1_thread": compare(dice["ray"], dice["local-1-thread"]),
                     "ray_vs_local": compare(dice["ray"], dice["local"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per Ray task (default: 1)")
    parser.add_argument("--smoke", action="store_true", help="a tiny study: checks that it works")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    study = [*QUICKSTART, *(SMOKE if args.smoke else [])]
    with tempfile.TemporaryDirectory(prefix="segft-executor-speed-") as folder:
        report = {**provenance("study"), **measure(study, args.cpus_per_run, Path(folder))}
    print(json.dumps({key: report[key] for key in ("executors", "speedup", "dice")}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
