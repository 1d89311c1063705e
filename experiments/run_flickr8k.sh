#!/usr/bin/env bash
# EXPERIMENTS.md "Real photos": hnsel simulate on ../shared/data/flickr8k-dev with the pretrained local towers
# (configs/effnet-lite0-minilm.json: EfficientNet-Lite0 + MiniLM, locked; LiT heads trained each round), as it ran.
# From the repository root, venv active, HF_HUB_OFFLINE=1. Two processes write separate --out folders (separate
# Milvus Lite files); merge.py joins them. Backbone features are computed once into .hnsel-cache (about 10 min on
# 2 CPU cores), then every round trains heads on cached features.
set -euo pipefail
F=${F:-../shared/data/flickr8k-dev}
OUT=${OUT:-experiments/flickr8k}
SEEDS=${SEEDS:-"0 1 2 3 4"}
mkdir -p "$OUT"
COMMON=(--images-dir "$F/images" --split train --test-split test --init 0.1 --rounds 4 --budget 120
        --model-name configs/effnet-lite0-minilm.json --pretrained none
        --loss "${LOSS:-infonce}" --head linear --epochs 30 --train-batch 128 --lr 0.001 --device cpu --json)
run() { hnsel simulate "$F/dataset_flickr8k_dev.json" --out "$OUT/$1" --seeds "$SEEDS" "${COMMON[@]}" --strategies "$2" > "$OUT/$1.log" 2>&1; }
# Three processes, as it ran (a run interrupted by a Milvus Lite start-up time-out under load resumes when the same
# command runs again: results.json is rewritten after every round).
run main "random coreset auto" &
run hn "hardneg" &
run variants "density hardneg:k=5 hardneg:weight=count hardneg:batch=mini" &
wait
python experiments/merge.py "$OUT" "$OUT"/main "$OUT"/hn "$OUT"/variants
