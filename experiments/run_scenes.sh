#!/usr/bin/env bash
# The EXPERIMENTS.md simulation, exactly as it ran (from the repository root, venv active, HF_HUB_OFFLINE=1).
# Seeds run as separate processes (separate --out folders, so separate Milvus Lite files); merge.py joins them.
set -euo pipefail
DATA=${DATA:-/tmp/sim/scenes}
OUT=${OUT:-experiments/scenes}
hnsel datasets scenes "$DATA" --n 2500 --per-category 10 --seed 0 --image-size 64 --captions 2 --val 0 --test 0.2
COMMON=(--init 0.1 --rounds 4 --budget 100 --model-name configs/hnsel-small.json --pretrained none
        --loss infonce --head linear --epochs 30 --batch-size 128 --cache-dir /tmp/sim/cache --device cpu --json)
for seed in 0 1 2; do
  hnsel simulate "$DATA/dataset_scenes.json" --out "$OUT/seed$seed" --seeds "$seed" "${COMMON[@]}" \
    --strategies "hardneg random coreset density hardneg:k=5,weight=count hardneg:batch=mini" > "$OUT/seed$seed.log" 2>&1 &
done
nice -n 10 hnsel simulate "$DATA/dataset_scenes.json" --out "$OUT/auto" --seeds "0 1 2" "${COMMON[@]}" --strategies "auto" > "$OUT/auto.log" 2>&1 &
wait
python experiments/merge.py "$OUT" "$OUT/seed0" "$OUT/seed1" "$OUT/seed2" "$OUT/auto"
