#!/usr/bin/env bash
# The EXPERIMENTS.md simulation, finely-categorised regime, as it ran (from the repository root, venv active,
# HF_HUB_OFFLINE=1). Processes write separate --out folders (separate Milvus Lite files); merge.py joins them,
# a later folder's run of the same strategy and seed replacing an earlier one.
set -euo pipefail
DATA=${DATA:-/tmp/sim/scenes}
OUT=${OUT:-experiments/scenes}
PER_CATEGORY=${PER_CATEGORY:-10}
hnsel datasets scenes "$DATA" --n 2500 --per-category "$PER_CATEGORY" --seed 0 --image-size 64 --captions 2 --val 0 --test 0.2
COMMON=(--init 0.1 --rounds 4 --budget 100 --model-name configs/hnsel-small.json --pretrained none
        --loss infonce --head linear --epochs 30 --train-batch 128 --cache-dir /tmp/sim/cache --device cpu --json)
run() { hnsel simulate "$DATA/dataset_scenes.json" --out "$OUT/$1" --seeds "$2" "${COMMON[@]}" --strategies "$3" > "$OUT/$1.log" 2>&1; }
EXTRA=${EXTRA:-"hardneg:k=5,weight=count hardneg:batch=mini"}  # variants, seeds 0-2 only
for seed in 0 1 2; do run "seed$seed" "$seed" "hardneg random coreset density $EXTRA" & done
wait
run seeds34 "3 4" "hardneg random coreset density" &
run auto2 "0 1 2 3 4" "auto" &
wait
run seeds59a "5 6 7 8 9" "hardneg random density" &
run seeds59b "5 6 7 8 9" "coreset auto" &
wait
python experiments/merge.py "$OUT" "$OUT"/seed0 "$OUT"/seed1 "$OUT"/seed2 "$OUT"/seeds34 "$OUT"/auto2 "$OUT"/seeds59a "$OUT"/seeds59b
