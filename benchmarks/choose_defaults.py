"""Choose defaults on evidence: each variant runs the quick study's fine-tuning arm on the built-in data and on the
real two-domain nucleus set, and validation Dice decides (issue 10). ``--choose loss`` compares the dynamic loss's
variants at the quick preset; ``--choose lr`` compares the quick preset's learning rate with the default loss.

Variants: ``loss_scope`` (patch or batch) x ``bce_in_every_branch`` (the fix, or the original loss); the quick
preset's learning rate with the default loss. The decision metric is the mean ``val_dice_dataset2`` (Dice on the pool images a fine-tuning run did not train on; never test
images) over both data sets, sizes and repeats; sizes stop at 15 so that every run has validation images. Test
Dice is recorded beside it for the README, never used to choose. Each variant trains its own base model (the loss
trains the base too). Writes one JSON with provenance:

    python benchmarks/choose_defaults.py --out benchmarks/results/loss_choice.json
    python benchmarks/choose_defaults.py --choose lr --out benchmarks/results/quick_lr_choice.json
    python benchmarks/choose_defaults.py --choose lr --set loss_scope=patch --set bce_in_every_branch=true \
        --out benchmarks/results/quick_lr_choice_with_fix.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from provenance import ROOT, provenance

LOSS_VARIANTS = {
    "patch+bce": {"loss_scope": "patch", "bce_in_every_branch": True},
    "batch+bce": {"loss_scope": "batch", "bce_in_every_branch": True},
    "patch (no fix)": {"loss_scope": "patch", "bce_in_every_branch": False},
    "batch (original)": {"loss_scope": "batch", "bce_in_every_branch": False},
}
LR_VARIANTS = {f"lr {lr:g}": {"lr": lr} for lr in (1e-3, 3e-4, 1e-4)}
#: What each ``--choose`` compares.
CHOICES = {"loss": LOSS_VARIANTS, "lr": LR_VARIANTS}
DATA = {"built-in": "", "dsb2018-two-domains": str(ROOT.parent / "shared" / "data" / "dsb2018-two-domains")}


def run_variant(data_dir: str, settings: dict, sizes: tuple[int, ...], repeats: int) -> dict:
    from segft import quality, schema
    from segft.config import StudyConfig
    from segft.presets import preset_train_config
    from segft.study import run_study

    train = preset_train_config("quick", {"data_dir": data_dir, **settings})
    config = StudyConfig(train=train, sizes=sizes, repeats=repeats, arms=("finetune",), preset="quick",
                         report_dir=tempfile.mkdtemp())
    start = time.perf_counter()
    result = run_study(config)
    runs = {key: {**r.val_metrics, **r.test_metrics} for key, r in result.runs.items()}
    ratio = schema.metric_name(schema.VALIDATION, "fg_ratio", schema.DATASET2)
    degenerate = {key: r.val_metrics[ratio] for key, r in result.runs.items()
                  if ratio in r.val_metrics and quality.ratio_problem(r.val_metrics[ratio], "validation images")}
    return {"wall_s": round(time.perf_counter() - start, 1), "runs": runs, "degenerate_on_validation": degenerate}


def _setting(text: str) -> tuple[str, object]:
    """``field=value`` with the value read as the field's type (bool, int, float or str)."""
    name, _, value = text.partition("=")
    for parse in (lambda v: {"true": True, "false": False}[v.lower()], int, float):
        try:
            return name, parse(value)
        except (KeyError, ValueError):
            pass
    return name, value


def mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choose", choices=sorted(CHOICES), default="loss")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a setting every variant shares, e.g. bce_in_every_branch=true (repeatable)")
    parser.add_argument("--sizes", default="5,10,15")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loss_choice.json")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    shared = dict(_setting(text) for text in args.set)
    variants = {name: {**shared, **settings} for name, settings in CHOICES[args.choose].items()}
    record = {**provenance(), "choose": args.choose, "sizes": sizes, "repeats": args.repeats, "preset": "quick",
              "arms": ["finetune"], "shared_settings": shared,
              "decision_metric": "mean val_dice_dataset2 over data sets, sizes and repeats", "variants": {}}
    for name, settings in variants.items():
        per_data = {}
        for data_name, data_dir in DATA.items():
            with tempfile.TemporaryDirectory() as store:
                os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
                outcome = run_variant(data_dir, settings, sizes, args.repeats)
            finetuned = [r for key, r in outcome["runs"].items() if key.startswith("finetune")]
            per_data[data_name] = {
                **outcome,
                "mean_val_dice_dataset2": mean([r["val_dice_dataset2"] for r in finetuned]),
                "mean_test_dice_dataset1": mean([r["test_dice_dataset1"] for r in finetuned]),
                "mean_test_dice_dataset2": mean([r["test_dice_dataset2"] for r in finetuned]),
            }
            print(name, data_name, {k: v for k, v in per_data[data_name].items() if k != "runs"}, flush=True)
        score = mean([d["mean_val_dice_dataset2"] for d in per_data.values()])
        record["variants"][name] = {"settings": settings, "validation_score": score, "data": per_data}
    record["chosen"] = max(record["variants"], key=lambda v: record["variants"][v]["validation_score"])
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("chosen:", record["chosen"], "->", args.out)


if __name__ == "__main__":
    main()
