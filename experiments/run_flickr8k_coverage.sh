#!/usr/bin/env bash
# EXPERIMENTS.md "Coverage strategies (issue 25)": herding and design against coreset and random on
# ../shared/data/flickr8k-dev, the protocol of experiments/run_flickr8k.sh (10 % initial set, the same for every
# strategy of a seed; 4 rounds of 120; linear heads, InfoNCE, 30 epochs), as it ran. Then experiments/coverage_stats.py
# gives the paired differences (95 % t and bootstrap intervals) on the last round's R-sum and on the area under the curve.
# From the repository root, HF_HUB_OFFLINE=1; PY is the venv's python.
set -euo pipefail
PY=${PY:-python}
F=${F:-../shared/data/flickr8k-dev}
OUT=${OUT:-experiments/flickr8k-coverage}
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT"
COMMON=(--images-dir "$F/images" --split train --test-split test --init 0.1 --rounds 4 --budget 120
        --model-name configs/effnet-lite0-minilm.json --pretrained none
        --loss "${LOSS:-infonce}" --head linear --epochs 30 --batch-size 128 --lr 0.001 --device cpu --json)
run() { "$PY" -m hnsel simulate "$F/dataset_flickr8k_dev.json" --out "$OUT/$1" --seeds "$SEEDS" "${COMMON[@]}" --strategies "$2" > "$OUT/$1.log" 2>&1; }
# Two processes (separate Milvus Lite files); the second starts once the first has cached the tower features (its
# first round written), so the features are computed once. A run stopped by a Lite time-out resumes when run again.
run base "random coreset" & first=$!
until [ -f "$OUT/base/results.json" ] || ! kill -0 "$first" 2>/dev/null; do sleep 10; done
run new "herding design" & second=$!
wait "$first"; wait "$second"
"$PY" experiments/merge.py "$OUT" "$OUT"/base "$OUT"/new
"$PY" experiments/coverage_stats.py "$OUT/results.json" --against coreset random > "$OUT/intervals.md"
