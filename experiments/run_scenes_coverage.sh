#!/usr/bin/env bash
# The coverage-limited regime of EXPERIMENTS.md (issue 7): one image per fine category, otherwise exactly
# run_scenes.sh (without the hardneg variants).
set -euo pipefail
DATA=${DATA:-/tmp/sim/scenes1} OUT=${OUT:-experiments/scenes-coverage} PER_CATEGORY=1 EXTRA="" \
  bash "$(dirname "$0")/run_scenes.sh"
