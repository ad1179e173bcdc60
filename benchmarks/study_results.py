"""Run the quick study on one data set and record its results for the README (every README results table is
rendered from such a file by ``benchmarks/readme_tables.py`` and checked against it by ``tests/test_readme.py``).

Runs ``segft study`` in process against a fresh temporary tracking store, builds the report, and writes one JSON:
provenance (command, commit, machine, date), wall time and peak resident memory, the summary table (mean Dice
with CIs per arm, size and dataset), the Dataset 1 change against the raw model (forgetting), the findings and
the runs flagged as degenerate.

    python benchmarks/study_results.py --data built-in --out benchmarks/results/study-quick-built-in.json
    python benchmarks/study_results.py --data dsb2018-two-domains --out benchmarks/results/study-quick-dsb2018.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from provenance import ROOT, provenance

SHARED = ROOT.parent / "shared" / "data"
DATA = {"built-in": "", "dsb2018-two-domains": str(SHARED / "dsb2018-two-domains"),
        "dsb2018-fluo-to-brightfield": str(SHARED / "dsb2018-fluo-to-brightfield")}


def records(table) -> list[dict]:
    return json.loads(table.to_json(orient="records"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="built-in")
    parser.add_argument("--arms", default="", help="comma-separated arms; empty for the study's default")
    parser.add_argument("--repeats", type=int, default=0, help="0 for the study's default")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads; 0 for this process's own count")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from analysis.report import build_report
    from segft.cli import build_parser, study_config_from_args
    from segft.config import ReportConfig
    from segft.study import run_study

    argv = ["study", "--preset", args.preset, "--data-dir", DATA[args.data]]
    argv += ["--repeats", str(args.repeats)] if args.repeats else []
    argv += ["--arms", args.arms] if args.arms else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        config = study_config_from_args(build_parser().parse_args([*argv, "--report-dir", f"{tmp}/report"]))
        start = time.perf_counter()
        result = run_study(config)
        report = build_report(ReportConfig(study_id=result.study_id, report_dir=f"{tmp}/report"))
        wall_s = time.perf_counter() - start
    change = report.paired_change
    record = {
        **provenance("study"),
        "segft_command": "segft " + " ".join(a if a else "''" for a in argv),
        "data": args.data,
        "study_id": result.study_id,
        "arms": list(config.arms),
        "repeats": config.repeats,
        "threads": config.train.threads or torch.get_num_threads(),
        "sizes": list(config.sizes),
        "wall_s": round(wall_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "summary": records(report.summary),
        "dataset1_change": records(change[change["dataset"] == "dataset1"]),
        "findings": records(report.findings),
        "degenerate": records(report.degenerate),
        "champion": {"model_uri": report.champion.model_uri, "run": report.champion.run,
                     "reason": report.champion.reason} if report.champion else None,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.data}: {wall_s:.0f} s, {len(report.tidy['run_id'].unique())} runs -> {args.out}")


if __name__ == "__main__":
    main()
