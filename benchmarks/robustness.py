"""Does the recipe hold on every data set and thread count? Gathers the study results files of the quick preset
(``benchmarks/study_results.py``, one per data set and PyTorch thread count) into one table: per study, how many
fine-tuned runs are flagged as degenerate on their test images (``segft.quality``: foreground ratio outside
[1/3, 3] on either dataset, or the same masks as another size), Dataset 2 Dice at the smallest and largest size,
and the findings (issue 20: "across 5 repeats, thread counts 1, 2 and 4 and three data sets, no fine-tuned run
is flagged").

It trains nothing: it reads the files, and refuses one made with other code than the working tree's (the same
check as ``tests/test_readme.py``), so the table never mixes code versions.

    python benchmarks/robustness.py benchmarks/results/study-quick-*.json --out benchmarks/results/robustness.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from provenance import provenance, stale_reason

FINETUNE = "finetune"


def study_row(name: str, record: dict) -> dict:
    """One study's line: data set, threads, repeats, the fine-tuned runs and those flagged on test images."""
    finetune = [r for r in record["summary"] if r["arm"] == FINETUNE and r["dataset"] == "dataset2"]
    sizes = sorted(r["n_images"] for r in finetune)
    flagged = sorted({(d["n_images"], d["repeat"]) for d in record["degenerate"] if d["arm"] == FINETUNE})
    dataset2 = {r["n_images"]: r["mean"] for r in finetune}
    return {
        "file": name, "data": record["data"], "arms": record["arms"], "threads": record["threads"],
        "repeats": record["repeats"],
        "cpu": record["machine"]["cpu"], "torch_cpu_capability": record["machine"].get("torch_cpu_capability"),
        "wall_s": record["wall_s"], "finetuned_runs": len(sizes) * record["repeats"],
        "flagged_finetuned_runs": [f"n={n} r{r}" for n, r in flagged],
        "flag_reasons": sorted({f"n={d['n_images']} r{d['repeat']} {d['dataset']}: {d['reason']}"
                                for d in record["degenerate"] if d["arm"] == FINETUNE}),
        "dataset2_dice_smallest": round(dataset2[sizes[0]], 4), "dataset2_dice_largest": round(dataset2[sizes[-1]], 4),
        "sizes": [sizes[0], sizes[-1]],
        "verdicts": {f["claim"]: f["verdict"] for f in record["findings"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study results files (study_results.py)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for path in sorted(args.studies):
        record = json.loads(path.read_text())
        reason = stale_reason(record, path.name)
        if reason:
            raise SystemExit(f"refused: {reason}")
        rows.append(study_row(path.name, record))
    rows.sort(key=lambda r: (r["data"], r["threads"]))
    flagged = sum(len(r["flagged_finetuned_runs"]) for r in rows)
    total = sum(r["finetuned_runs"] for r in rows)
    out = {**provenance("robustness"), "studies": rows, "flagged_finetuned_runs": flagged, "finetuned_runs": total}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{flagged} of {total} fine-tuned runs flagged over {len(rows)} studies -> {args.out}")


if __name__ == "__main__":
    main()
