#!/usr/bin/env bash
# The coverage-limited regime of EXPERIMENTS.md (issue 7): one image per fine category, otherwise as
# run_scenes.sh. From the repository root, venv active, HF_HUB_OFFLINE=1.
set -euo pipefail
DATA=${DATA:-/tmp/sim/scenes1}
OUT=${OUT:-experiments/scenes-coverage}
hnsel datasets scenes "$DATA" --n 2500 --per-category 1 --seed 0 --image-size 64 --captions 2 --val 0 --test 0.2
COMMON=(--init 0.1 --rounds 4 --budget 100 --model-name configs/hnsel-small.json --pretrained none
        --loss infonce --head linear --epochs 30 --batch-size 128 --cache-dir /tmp/sim/cache --device cpu --json)
for seed in 0 1 2; do
  hnsel simulate "$DATA/dataset_scenes.json" --out "$OUT/seed$seed" --seeds "$seed" "${COMMON[@]}" \
    --strategies "hardneg random coreset density auto" > "$OUT/seed$seed.log" 2>&1 &
done
wait
python experiments/merge.py "$OUT" "$OUT/seed0" "$OUT/seed1" "$OUT/seed2"
