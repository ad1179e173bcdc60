"""README results tables, rendered from the committed ``benchmarks/results/*.json`` files.

The README holds each table between ``<!-- results: <file> -->`` and ``<!-- /results -->``; ``--write`` fills
them in from the files, and ``tests/test_readme.py`` fails when a block differs from what its file renders, so a
table can never silently go stale. Tables that describe the code rather than a result (the presets) sit between
``<!-- from-code: <name> -->`` and ``<!-- /from-code -->`` and are rendered from the code the same way.

    python benchmarks/readme_tables.py --write
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results: (?P<file>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
CODE_BLOCK = re.compile(r"(<!-- from-code: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /from-code -->)", re.S)


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _threads(count: int) -> str:
    return f"{count} thread{'' if count == 1 else 's'}"


def _machine(record: dict) -> str:
    m = record["machine"]
    cpu = m["cpu"] + (f" (family {m['cpu_family']}, model {m['cpu_model_number']}, torch kernels "
                      f"{m['torch_cpu_capability']})" if m.get("cpu_family") else "")
    return (f"{cpu}, {m['cores']} cores, {_threads(m['torch_threads'])}, torch {m['torch']}"
            f"{', GPU ' + m['gpu'] if m['gpu'] else ', no GPU'}; commit {record['commit'][:10]}, {record['date'][:10]}")


def study_table(record: dict) -> str:
    """Mean test Dice [95 % CI] per arm and size, both datasets, and Dataset 1's change against the raw model."""
    cells = {(r["arm"], r["n_images"], r["dataset"]): r for r in record["summary"]}
    change = {(r["arm"], r["n_images"]): r for r in record["dataset1_change"]}
    rows = sorted({(arm, n) for arm, n, _ in cells}, key=lambda k: (k[0] != "raw", k[0] != "threshold", k[0], k[1]))
    lines = ["| arm | n | Dataset 1 | Dataset 2 | Dataset 1 change vs raw |", "|---|---|---|---|---|"]
    for arm, n in rows:
        d1, d2 = cells.get((arm, n, "dataset1")), cells.get((arm, n, "dataset2"))
        c = change.get((arm, n))
        text = [_ci(x["mean"], x["ci_low"], x["ci_high"]) if x else "–" for x in (d1, d2)]
        delta = _ci(c["mean_change"], c["ci_low"], c["ci_high"]) if c and arm != "threshold" else "–"
        lines.append(f"| {arm} | {n} | {text[0]} | {text[1]} | {delta} |")
    findings = [f"- **{f['verdict']}**: {f['claim']} ({f['evidence']})" + _without_flagged(f)
                for f in record["findings"]]
    flagged = sorted({f"{d['arm']} n={d['n_images']} r{d['repeat']} ({d['dataset']}, ratio {d['fg_ratio']:.2f})"
                      for d in record["degenerate"]})
    return "\n".join([
        f"`{record['segft_command']}`: {record['repeats']} repeats, {record['wall_s'] / 60:.1f} min wall, peak "
        f"{record['peak_rss_mb'] / 1024:.1f} GB resident ({_machine(record)}).",
        "", *lines, "", "Findings:", "", *findings, "",
        "Runs flagged as degenerate on test images: " + ("; ".join(flagged) if flagged else "none") + ".",
        *(["", f"Champion: {record['champion']['reason'] or 'none'}"] if record.get("champion") else []),
    ])


def _without_flagged(finding: dict) -> str:
    """What a finding says without the flagged runs, when that differs from what it says with them."""
    if finding.get("evidence_without_flagged", finding["evidence"]) == finding["evidence"]:
        return ""
    agrees = "the same verdict" if finding["agrees"] else "**a different verdict**"
    return (f"; without the flagged runs, {agrees}: **{finding['verdict_without_flagged']}** "
            f"({finding['evidence_without_flagged']})")


def recipe_table(record: dict) -> str:
    """Per variant and data set: Dice on the pool images the runs did not train on (decides, after the flags),
    test Dice (reported only) and the runs flagged on their selection images."""
    data = record["data_sets"]
    head = ["variant", "flagged runs", "validation score"] + [
        f"{d}: val D2 / test D1 / test D2 (flagged)" for d in data]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, variant in record["variants"].items():
        cells = [f"{v['mean_val_dice_dataset2']:.3f} / {v['mean_test_dice_dataset1']:.3f} / "
                 f"{v['mean_test_dice_dataset2']:.3f} ({len(v['flagged_on_selection_images'])} of {len(v['runs'])})"
                 for v in variant["data"].values()]
        mark = " (chosen)" if name == record["chosen"] else ""
        lines.append(f"| {name}{mark} | {variant['flagged_runs']} | {variant['validation_score']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join([
        f"Quick preset, fine-tuning arm, sizes {', '.join(map(str, record['sizes']))}, {record['repeats']} repeats "
        f"({_machine(record)}); `{record['command']}`. Rule: "
        f"{record['decision_rule']}.", "", *lines])


def coverage_table(record: dict) -> str:
    """How often the nominal 95 % interval covers the true mean of simulated studies."""
    lines = ["| simulated study | crossed bootstrap (segft) | images, then repeats within images (before) |",
             "|---|---|---|"]
    for c in record["cases"]:
        nested = f"{c['nested']:.1%}" if c["nested"] is not None else "–"
        lines.append(f"| {c['case']}; sd repeat {c['sd_repeat']:g}, image {c['sd_image']:g}, noise "
                     f"{c['sd_noise']:g} | {c['crossed']:.1%} | {nested} |")
    return "\n".join([f"{record['studies']} simulated studies per case, {record['resamples']} resamples each "
                      f"(`{record['command']}`; commit {record['commit'][:10]}):", "", *lines])


def threads_table(record: dict) -> str:
    """The same study at another thread count against the default file (the name without ``-1-thread``): every
    cell side by side, whether each lies inside the other's interval, and whether the findings agree."""
    other = json.loads((RESULTS / record["first_run"]).read_text())
    cells = {(r["arm"], r["n_images"], r["dataset"]): r for r in other["summary"]}
    lines = [f"| arm | n | dataset | {_threads(other['threads'])} | {_threads(record['threads'])} | difference |",
             "|---|---|---|---|---|---|"]
    diffs, inside = [], 0
    for r in record["summary"]:
        o = cells[(r["arm"], r["n_images"], r["dataset"])]
        diffs.append(abs(r["mean"] - o["mean"]))
        inside += o["ci_low"] <= r["mean"] <= o["ci_high"] and r["ci_low"] <= o["mean"] <= r["ci_high"]
        lines.append(f"| {r['arm']} | {r['n_images']} | {r['dataset']} | {_ci(o['mean'], o['ci_low'], o['ci_high'])} "
                     f"| {_ci(r['mean'], r['ci_low'], r['ci_high'])} | {r['mean'] - o['mean']:+.3f} |")
    verdicts = [(f["claim"], f["verdict"], g["verdict"]) for f, g in zip(other["findings"], record["findings"])]
    same = sum(a == b for _, a, b in verdicts)
    changed = "; ".join(f"{claim}: {a} → {b}" for claim, a, b in verdicts if a != b)
    return "\n".join([
        f"`{record['first_run']}` ({_threads(other['threads'])}) and `{record['file']}` ({_threads(record['threads'])}), "
        f"{_machine(record)}:", "", *lines, "",
        f"{inside} of {len(diffs)} cells lie inside each other's interval; mean |difference| "
        f"{sum(diffs) / len(diffs):.3f}, largest {max(diffs):.3f}. Findings: {same} of {len(verdicts)} verdicts "
        f"the same{' (' + changed + ')' if changed else ''}. Flagged (run, dataset) rows: {len(other['degenerate'])} at "
        f"{_threads(other['threads'])}, {len(record['degenerate'])} at {_threads(record['threads'])}."])


def robustness_table(record: dict) -> str:
    """Per data set and thread count: the fine-tuned runs flagged as degenerate on test images, Dataset 2 Dice at
    the smallest and largest size, and whether the findings agree across thread counts."""
    lines = ["| data set | threads | CPU kernels | repeats | flagged fine-tuned runs | Dataset 2 Dice, fewest / most images "
             "| wall time |", "|---|---|---|---|---|---|---|"]
    for r in record["studies"]:
        flagged = ", ".join(r["flagged_finetuned_runs"])
        lines.append(f"| {r['data']} | {r['threads']} | {r['torch_cpu_capability']} | {r['repeats']} | "
                     f"{len(r['flagged_finetuned_runs'])} of {r['finetuned_runs']}{' (' + flagged + ')' if flagged else ''}"
                     f" | n={r['sizes'][0]}: {r['dataset2_dice_smallest']:.3f}, n={r['sizes'][1]}: "
                     f"{r['dataset2_dice_largest']:.3f} | {r['wall_s'] / 60:.1f} min |")
    differ = []
    # a finding is compared between studies of the same arms only: "every trained model gives plausible masks"
    # covers the scratch arm's models too where it ran
    for data, arms in sorted({(r["data"], tuple(r["arms"])) for r in record["studies"]}):
        studies = [r for r in record["studies"] if (r["data"], tuple(r["arms"])) == (data, arms)]
        claims = set().union(*(r["verdicts"] for r in studies))
        for claim in sorted(claims):
            seen = {r["threads"]: r["verdicts"].get(claim, "–") for r in studies}
            if len(set(seen.values())) > 1:
                differ.append(f"{data} ({', '.join(arms)}), {claim}: " +
                              ", ".join(f"{v} at {_threads(t)}" for t, v in sorted(seen.items())))
    agreement = ("The findings are the same at every thread count of each data set and set of arms." if not differ
                 else "Findings that differ between thread counts (studies of the same arms compared): " +
                 "; ".join(differ) + ".")
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}):", "", *lines, "",
        f"**{record['flagged_finetuned_runs']} of {record['finetuned_runs']}** fine-tuned runs flagged. {agreement}"])


def speed_table(record: dict) -> str:
    """Training step times of the default model and the original network, inference speed, peak memory."""
    protocol = record["protocol_batch"]
    lines = ["| model | step | precision | batch | ms / step | patches / s | original protocol (18,750 steps at batch "
             f"{protocol}), pure compute |", "|---|---|---|---|---|---|---|"]
    for m in record["training"]:
        lines.append(f"| {m['model']} | {m['mode']} | {m['precision']} | {m['batch_size']} | {m['step_ms']:,.1f} | "
                     f"{m['patches_per_s']:.1f} | {m['protocol_minutes']:,.0f} min |")
    inference = "; ".join(f"{r['precision']}: {r['median_s']:.2f} s per image, **{r['megapixels_per_s']:.2f} "
                          f"megapixels per second**" for r in record["inference"])
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}):", "", *lines, "",
        f"The default model trains **{record['default_speedup_over_paulow']:.1f}x** faster than the original network "
        f"at batch {protocol} (eager, float32). Inference on one {record['image_size']} x {record['image_size']} "
        f"16-bit image ({record['inference'][0]['windows']} windows): {inference}. Peak resident memory of the "
        f"benchmark: {record['peak_memory']['peak_resident_mb']:,.0f} MB."])


def predict_memory_table(record: dict) -> str:
    """Peak resident memory of ``segft predict`` per image size (whole or in strips, and its time), the fixed
    overhead, the criterion and the bound."""
    lines = ["| image | image bytes | windows | segmented | time | peak resident | above the baseline (per pixel) |",
             "|---|---|---|---|---|---|---|"]
    for r in record["sizes"]:
        lines.append(f"| {r['side']} x {r['side']} | {r['image_bytes'] / 2**20:,.0f} MB | {r['windows']:,} | "
                     f"{'in strips' if r['in_strips'] else 'whole'} | {r['seconds']:,.0f} s | "
                     f"{r['peak_rss_mb']:,.0f} MB | {r['above_baseline_mb']:,.0f} MB "
                     f"({r['bytes_per_pixel_above_baseline']:.1f} bytes) |")
    c, b = record["criterion"], record["bound"]
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}): the default model, untrained, {record['patch_size']} x "
        f"{record['patch_size']} windows at {record['overlap'] * 100:.0f} % overlap, {record['batch_size']} per batch, "
        f"`--memory-budget-mb {record['memory_budget_mb']}`, one {record['image_dtype']} image per process:", "",
        *lines, "",
        f"Baseline, a process that imports what `segft predict` imports and loads the model without predicting: "
        f"{record['baseline_rss_mb']:,.0f} MB. Criterion {c['rule']}: {c['peak_mb']:,.0f} MB against "
        f"{c['limit_mb']:,.0f} MB, **{'met' if c['passed'] else 'not met'}**. Bound {b['rule']}: "
        f"{b['peak_mb']:,.0f} MB, **{'met' if b['passed'] else 'not met'}**."])


def executor_table(record: dict) -> str:
    """Wall time of one study in process and on Ray, the speed-ups, and how far apart their per-run Dice are."""
    lines = ["| executor | flags | runs | wall time | mean test Dice, Dataset 1 / Dataset 2 |", "|---|---|---|---|---|"]
    for r in record["executors"]:
        means = r["mean_test_dice"]
        lines.append(f"| {r['executor']} | {'`' + r['flags'] + '`' if r['flags'] else '(default)'} | {r['runs']} | "
                     f"{r['wall_s'] / 60:.1f} min | {means['dataset1']:.3f} / {means['dataset2']:.3f} |")
    same, other = record["dice"]["ray_vs_local_1_thread"], record["dice"]["ray_vs_local"]
    return "\n".join([
        f"`{record['command']}` ({_machine(record)}): `{record['segft_command']}`, {record['concurrent_runs']} runs "
        f"at once on Ray:", "", *lines, "",
        f"On Ray the study took **{1 / record['speedup']:.0%}** of the default in-process time "
        f"({record['speedup']:.2f}x as fast; {record['speedup_over_1_thread']:.2f}x against one thread in process). "
        f"Per-run test Dice, Ray against one thread in process: {same['identical']} of {same['values_compared']} "
        f"values identical (largest difference {same['max_abs_difference']:.2g}); against the default in process: "
        f"{other['identical']} of {other['values_compared']} identical, largest difference "
        f"{other['max_abs_difference']:.2g}."])


RENDERERS = {"study-": study_table, "recipe_choice": recipe_table, "loss_choice": recipe_table,
             "quick_lr_choice": recipe_table, "interval-coverage": coverage_table, "robustness": robustness_table,
             "speed-": speed_table, "predict-memory-": predict_memory_table, "executor-": executor_table}


def preset_table() -> str:
    """What each preset sets (``segft.presets``): one row per setting a preset changes, ``protocol``'s value (the
    original study's, the dataclass default), ``quick``'s, and why ``quick`` sets it."""
    from segft.presets import PRESETS, QUICK_REASONS, preset_train_config
    from segft.tracking.log import flatten_config

    values = {name: flatten_config(preset_train_config(name)) for name in PRESETS}
    settings = list(dict.fromkeys(key for preset in PRESETS.values() for key in preset))
    rows = ["| setting | " + " | ".join(f"`{name}`" for name in PRESETS) + " | why `quick` sets it |",
            "|---|" + "---|" * len(PRESETS) + "---|"]
    for setting in settings:
        cells = " | ".join(f"`{_setting_value(values[name][setting])}`" for name in PRESETS)
        rows.append(f"| `{setting}` | {cells} | {QUICK_REASONS.get(setting, '')} |")
    return "\n".join(rows)


def _setting_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


FROM_CODE = {"presets": preset_table}


def render(file: str) -> str:
    """The README block of results file ``file`` (a name in ``benchmarks/results``)."""
    record = json.loads((RESULTS / file).read_text())
    if file.endswith("-1-thread.json"):
        return threads_table({**record, "file": file, "first_run": file.replace("-1-thread", "")}) + "\n"
    for prefix, renderer in RENDERERS.items():
        if file.startswith(prefix):
            return renderer(record) + "\n"
    raise KeyError(f"no README renderer for {file}; known prefixes: {sorted(RENDERERS)}")


def blocks(text: str) -> list[tuple[str, str]]:
    """``(file, body)`` of every results block in a README text."""
    return [(m["file"], m["body"]) for m in BLOCK.finditer(text)]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(name, body)`` of every from-code block in a README text."""
    return [(m["name"], m["body"]) for m in CODE_BLOCK.finditer(text)]


def render_code(name: str) -> str:
    """The README block ``name`` of ``FROM_CODE``."""
    if name not in FROM_CODE:
        raise KeyError(f"no README table named {name!r}; known: {sorted(FROM_CODE)}")
    return FROM_CODE[name]() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README's blocks (default: print them)")
    args = parser.parse_args()
    text = README.read_text()
    if not args.write:
        for file, _ in blocks(text):
            print(f"--- {file}\n{render(file)}")
        for name, _ in code_blocks(text):
            print(f"--- {name}\n{render_code(name)}")
        return
    text = BLOCK.sub(lambda m: m.group(1) + render(m["file"]) + m.group(4), text)
    README.write_text(CODE_BLOCK.sub(lambda m: m.group(1) + render_code(m["name"]) + m.group(4), text))
    print(f"rewrote {len(blocks(text))} results blocks and {len(code_blocks(text))} from-code blocks in {README}")


if __name__ == "__main__":
    main()
