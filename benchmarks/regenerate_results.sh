#!/usr/bin/env bash
# Regenerate every results file the README quotes, one after the other (never two PyTorch processes at once: on a
# 2-core machine they slow each other 5-10x), then rewrite the README's results blocks from them.
# About three hours on a 2-core CPU. Each file records its command, commit, machine and a digest of the code it
# depends on (tests/test_readme.py fails when that code changes): run it again after such a change.
# First the recipe is chosen on validation images over every data set, then the studies run with it: every data
# set at 1, 2 and 4 PyTorch threads (robustness.json gathers their flagged runs), the real ones with all arms at 2.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
out=benchmarks/results
study="$py benchmarks/study_results.py --repeats 5"
$py benchmarks/interval_coverage.py --out $out/interval-coverage.json
$py benchmarks/choose_defaults.py --choose recipe --sizes 5,15 --repeats 2 --out $out/recipe_choice.json
# The quickstart's study (mlflow run . -e study -P preset=quick -P arms=finetune,threshold), at 2, 1 and 4 threads.
$study --data built-in --arms finetune,threshold --threads 2 --out $out/study-quick-built-in.json
$study --data built-in --arms finetune,threshold --threads 1 --out $out/study-quick-built-in-1-thread.json
$study --data built-in --arms finetune,threshold --threads 4 --out $out/study-quick-built-in-4-threads.json
for data in dsb2018-two-domains dsb2018-fluo-to-brightfield; do
  $study --data $data --arms finetune,scratch,joint,threshold --threads 2 --out $out/study-quick-$data-all-arms.json
  $study --data $data --arms finetune,threshold --threads 1 --out $out/study-quick-$data-1-thread.json
  $study --data $data --arms finetune,threshold --threads 4 --out $out/study-quick-$data-4-threads.json
done
$py benchmarks/robustness.py $out/study-quick-*.json --out $out/robustness.json
$py benchmarks/speed.py --steps 3 --large-batch 16 --compile --out $out/speed-cpu.json
$py benchmarks/predict_memory.py --out $out/predict-memory-cpu.json   # peak memory, not a timing
$py benchmarks/executor_speed.py --out $out/executor-cpu.json   # the quickstart study in process and on Ray
$py benchmarks/readme_tables.py --write
