"""Certify that a change to the code the results files depend on changes none of their numbers (a refactor), so
that the files need not be made again (issue 21: "the same seeds give the same Dice before and after").

A results file records the digest of the code it depends on (``provenance.CODE``), and ``tests/test_readme.py``
fails when that code changes. Regenerating every file takes about three hours on 2 cores; a change meant to move
no number (a renamed function, runs opened through one pipeline, names moved into the schema) is instead checked
here: the same small studies run at ``--since`` (a commit, checked out into a temporary folder) and at the working
tree, each in its own process, and every outcome they logged is compared exactly — every metric's whole history
(training losses per epoch, per-dataset Dice, foreground ratios, validation scores), the per-image Dice tables
and the bytes of every predicted mask, run by run. Only when all are identical is the pair of digests appended to
``benchmarks/results/equivalences.json``, and ``provenance.stale_reason`` then accepts a file made at the older
code. One differing number and nothing is certified: regenerate (``benchmarks/regenerate_results.sh``).

The studies (``CANARIES``) cover every arm and the recipe settings the choice of defaults compares (both
normalizations, freezing, WiSE-FT, both losses), on the built-in data and, when ``../shared`` is there, on the
real large shift (files read from disk). Timings are not outcomes: the speed and memory files (``speed``,
``predict``) and the interval simulation (``intervals``) are never certified, only made again.

    python benchmarks/equivalence.py --since 1753fb0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from provenance import CODE, EQUIVALENCES, ROOT, code_digest, load_certificates, provenance, selected

#: The kinds of results file whose numbers are outcomes of the studies the canaries run.
CERTIFIABLE = ("study", "choice", "robustness")
SHARED = ROOT.parent / "shared" / "data"
#: One epoch on the protocol's split (fewer training images would leave many more test images to score).
_SMALL = ["--epochs", "1", "--threads", "2", "--system-metrics", "false"]
#: name -> (data folder, ``segft study`` arguments); small enough to run twice in a few minutes on 2 cores.
CANARIES = {
    "built-in, quick preset, every arm": ("", ["--preset", "quick", *_SMALL, "--sizes", "2,4", "--repeats", "2",
                                               "--arms", "finetune,scratch,joint,threshold"]),
    "built-in, percentile, encoder frozen, WiSE-FT 0.7, original loss": (
        "", ["--preset", "quick", *_SMALL, "--sizes", "2", "--repeats", "1", "--arms", "finetune",
             "--normalization", "percentile", "--freeze", "encoder", "--finetune-mix", "0.7", "--finetune-lr", "0",
             "--bce-in-every-branch", "false"]),
    "dsb2018-fluo-to-brightfield, quick preset, fine-tuning": (
        str(SHARED / "dsb2018-fluo-to-brightfield"),
        ["--preset", "quick", *_SMALL, "--sizes", "2", "--repeats", "1", "--arms", "finetune,threshold"]),
}
#: Code whose outcomes the canaries do not compare: the intervals and findings computed from the logged runs. A
#: change to it is never certified (regenerate instead).
UNCOMPARED = ("analysis/summary.py",)
#: Logged artifacts that are outcomes (per-image tables, predicted masks); models carry creation times and ids.
_OUTCOME_ARTIFACTS = ("evaluation/", "predictions/")
#: Metrics that measure the machine, not the result.
_TIMING_WORDS = ("seconds", "time", "per_second", "memory", "rss")


def run_canary(tree: Path, data_dir: str, arguments: list[str], store: Path) -> None:
    """``segft study`` from the code in ``tree`` (its own process; ``PYTHONPATH`` puts ``tree`` first)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db"}
    command = [sys.executable, "-m", "segft", "study", "--data-dir", data_dir, *arguments,
               "--report-dir", str(store / "report")]
    done = subprocess.run(command, cwd=store, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"segft study failed at {tree}:\n{done.stderr[-3000:]}")


def outcomes(store: Path) -> dict[str, dict]:
    """Every run's outcomes in the store, keyed by what the run is (role, arm, size, repeat), not its id."""
    from mlflow import MlflowClient

    from segft import schema

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    found: dict[str, dict] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=10000):
            tags, params = run.data.tags, run.data.params
            if schema.ROLE_TAG not in tags:
                continue
            label = "/".join([tags[schema.ROLE_TAG], tags.get(schema.ARM_TAG, ""), params.get("n_images", ""),
                              tags.get(schema.REPEAT_TAG, "")])
            metrics = {name: [m.value for m in client.get_metric_history(run.info.run_id, name)]
                       for name in sorted(run.data.metrics)
                       if not name.startswith("system/") and not any(w in name for w in _TIMING_WORDS)}
            artifacts = {}
            with tempfile.TemporaryDirectory() as tmp:
                for top in _OUTCOME_ARTIFACTS:
                    try:
                        local = Path(client.download_artifacts(run.info.run_id, top.rstrip("/"), tmp))
                    except Exception:  # noqa: BLE001 - a run without that folder (a threshold or a parent run)
                        continue
                    for file in sorted(p for p in local.rglob("*") if p.is_file()):
                        artifacts[f"{top}{file.relative_to(local).as_posix()}"] = hashlib.sha256(
                            file.read_bytes()).hexdigest()
            if label in found:
                raise SystemExit(f"two runs are {label}: the canary cannot tell them apart")
            found[label] = {"metrics": metrics, "artifacts": artifacts}
    return found


def differences(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """What differs, in words: a run, metric or artifact present on one side only, or a different value. A
    metric or artifact the new code adds is not a difference (a refactor may log more)."""
    found = [f"run {label}: only at the older code" for label in sorted(before.keys() - after.keys())]
    found += [f"run {label}: only at the new code" for label in sorted(after.keys() - before.keys())]
    for label in sorted(before.keys() & after.keys()):
        for part in ("metrics", "artifacts"):
            for name, value in before[label][part].items():
                if name not in after[label][part]:
                    found.append(f"run {label}: {part[:-1]} {name} missing at the new code")
                elif after[label][part][name] != value:
                    found.append(f"run {label}: {part[:-1]} {name}: {str(value)[:80]} -> "
                                 f"{str(after[label][part][name])[:80]}")
    return found


def checkout(commit: str, into: Path) -> None:
    """The files of ``commit`` (``git archive``) in ``into``."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", commit], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")


def changed_files(since: str) -> list[str]:
    """The files of the certified kinds' code that differ between ``since`` and the working tree (added, removed
    or edited), for the reader of a certificate."""
    def git(*args: str) -> list[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()

    changed = set(git("diff", "--name-only", since)) | set(git("ls-files", "--others", "--exclude-standard"))
    return sorted({path for kind in CERTIFIABLE for path in selected(sorted(changed), CODE[kind])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--since", required=True, help="the commit the results files were made at")
    args = parser.parse_args()
    uncompared = sorted(set(changed_files(args.since)) & set(UNCOMPARED))
    if uncompared:
        raise SystemExit(f"{', '.join(uncompared)} changed since {args.since}: the canaries compare what runs log, "
                         "not the intervals and findings computed from it; regenerate the results files "
                         "(benchmarks/regenerate_results.sh)")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per downloaded folder, thousands of them
    with tempfile.TemporaryDirectory() as tmp:
        older = Path(tmp)
        checkout(args.since, older)
        canaries = {name: c for name, c in CANARIES.items() if not c[0] or Path(c[0]).is_dir()}
        compared = {}
        for name, (data_dir, arguments) in canaries.items():
            sides = {}
            for side, tree in (("older", older / "tree"), ("new", ROOT)):
                store = older / f"{side}-{len(compared)}"
                store.mkdir()
                print(f"{name}: {side} code ...", flush=True)
                run_canary(tree, data_dir, arguments, store)
                sides[side] = outcomes(store)
            found = differences(sides["older"], sides["new"])
            if found:
                raise SystemExit(f"{name}: {len(found)} difference(s), nothing certified:\n  " +
                                 "\n  ".join(found[:20]))
            compared[name] = {"data_dir": data_dir, "arguments": arguments, "runs": len(sides["new"]),
                              "metric_values": sum(len(v) for r in sides["new"].values()
                                                   for v in r["metrics"].values()),
                              "artifacts": sum(len(r["artifacts"]) for r in sides["new"].values())}
        digests = {kind: {"from": code_digest(CODE[kind], args.since), "to": code_digest(CODE[kind])}
                   for kind in CERTIFIABLE}
    certificate = {**provenance("study"), "since": args.since, "changed_files": changed_files(args.since),
                   "canaries": compared,
                   "digests": {k: d for k, d in digests.items() if d["from"] != d["to"]}}
    for key in ("code", "code_digest"):
        certificate.pop(key)
    EQUIVALENCES.write_text(json.dumps([*load_certificates(), certificate], indent=1) + "\n")
    print(f"identical outcomes in {len(compared)} canaries; certified {sorted(certificate['digests'])} -> "
          f"{EQUIVALENCES.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
