#!/usr/bin/env bash
# Regenerate every results file the README quotes, one after the other (never two PyTorch processes at once: on a
# 2-core machine they slow each other 5-10x), then rewrite the README's results blocks from them.
# About an hour and three quarters on a 2-core CPU. Run from a clean, committed tree: each file records the commit.
# First the defaults are chosen on validation images, then the studies run with them.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out=benchmarks/results
$py benchmarks/choose_defaults.py --choose lr --set loss_scope=patch --set bce_in_every_branch=true --out $out/quick_lr_choice_with_fix.json
$py benchmarks/choose_defaults.py --choose loss --out $out/loss_choice.json
$py benchmarks/study_results.py --data built-in --out $out/study-quick-built-in.json
$py benchmarks/study_results.py --data built-in --out $out/study-quick-built-in-again.json   # repeatability
$py benchmarks/study_results.py --data built-in --arms finetune,scratch,joint,threshold --out $out/study-quick-built-in-all-arms.json
$py benchmarks/study_results.py --data dsb2018-two-domains --arms finetune,scratch,joint,threshold --out $out/study-quick-dsb2018-all-arms.json
$py benchmarks/speed.py --steps 3 --large-batch 16 --compile --out $out/speed-cpu.json
$py benchmarks/predict_memory.py --out $out/predict-memory-cpu.json   # peak memory, not a timing
$py benchmarks/executor_speed.py --out $out/executor-cpu.json   # the quickstart study in process and on Ray
$py benchmarks/readme_tables.py --write
