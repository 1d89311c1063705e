#!/usr/bin/env bash
# EXPERIMENTS.md "ASCMR's probabilistic informativeness on real photos": as it ran. From the repository root, venv
# active, HF_HUB_OFFLINE=1; the tower features come from .hnsel-cache (computed on first use, about 10 min on 2 cores).
# A run stopped by a Milvus Lite start-up time-out under load resumes when the same command runs again.
set -euo pipefail
F=${F:-../shared/data/flickr8k-dev}
OUT=${OUT:-experiments/flickr8k}
SEEDS=${SEEDS:-"0 1 2 3 4"}
COMMON=(--images-dir "$F/images" --split train --test-split test
        --model-name configs/effnet-lite0-minilm.json --pretrained none
        --loss infonce --head linear --epochs 30 --train-batch 128 --lr 0.001 --device cpu --json)
ROUNDS=(--init 0.1 --rounds 4 --budget 120)
sim() { hnsel simulate "$F/dataset_flickr8k_dev.json" --seeds "$SEEDS" "${COMMON[@]}" "$@" > /dev/null; }
# probabilistic heads (variances stored for ascmr) for every strategy compared
sim --out "$OUT/ascmr-prob" "${ROUNDS[@]}" --strategies "ascmr random coreset auto hardneg" --probabilistic 1.0
# plain heads: ascmr's zero-variance fallback, against the plain runs of experiments/run_flickr8k.sh
sim --out "$OUT/ascmr-plain" "${ROUNDS[@]}" --strategies ascmr
# full supervision with probabilistic heads: round 1 trains on all 2,400 pool images
sim --out "$OUT/ceiling-prob" --init 0.99958 --rounds 1 --budget 1 --strategies random --probabilistic 1.0
python experiments/compare.py "$OUT/ascmr-prob/results.json" --ceiling 258.1
python experiments/compare.py "$OUT/results.json" "$OUT/ascmr-plain/results.json" --ceiling 252.8
