#!/bin/bash
# Issue 31: choose each width's default recipe label-free (intasr.selection). Every candidate is
# quantized from the synthetic batch of seed 0 and scored by its word errors against the float
# model's own transcripts of the untranscribed train-clean-100 utterances past the real-calibration
# head; the best two of each width are then run on seeds 1 and 2 too, and the default is the one
# with the fewest errors over the three seeds (intasr.selection.choose). Resumable: rows already in
# the file are skipped (tools/run_adaround.py). Learned codes and synthetic batches are cached in build/.
#   tools/select_recipes.sh [stage]      # stage 1: every candidate, seed 0; stage 2: seeds 1 2 of the finalists
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/recipe_selection.csv}
run() { "$PY" tools/run_adaround.py --criterion fp32-agreement --threads "${THREADS:-2}" --out "$OUT" "$@"; }
GROUPED="--rounding adaround --iterations 100 --symmetric --edge-bits 8 --equalize"
if [ "${1:-1}" = 1 ]; then
  run --seeds 0 --bits 8/8 --rounding nearest
  run --seeds 0 --bits 8/8 --rounding nearest --bias-correction
  run --seeds 0 --bits 6/8 --rounding nearest --bias-correction
  run --seeds 0 --bits 4/8 --rounding nearest --bias-correction
  run --seeds 0 --bits 4/8 --rounding nearest --bias-correction --edge-bits 8 --equalize --weight-group 16
  run --seeds 0 --bits 4/8 $GROUPED --weight-group 16
  run --seeds 0 --bits 6/8 --rounding adaround --iterations 100 --symmetric
  run --seeds 0 --bits 4/8 $GROUPED --weight-group 32
  run --seeds 0 --bits 4/8 $GROUPED --weight-group 64
  run --seeds 0 --bits 4/8 $GROUPED
  run --seeds 0 --bits 4/8 --rounding adaround --iterations 100 --symmetric --edge-bits 8
  run --seeds 0 --bits 4/8 --rounding adaround --iterations 100 --symmetric
fi
if [ "${1:-2}" = 2 ]; then   # the finalists, as stage 1 ranked them (results/README.md lists them)
  run --seeds 1 2 --bits 8/8 --rounding nearest
  run --seeds 1 2 --bits 8/8 --rounding nearest --bias-correction
  run --seeds 1 2 --bits 6/8 --rounding nearest --bias-correction
  run --seeds 1 2 --bits 6/8 --rounding adaround --iterations 100 --symmetric
  run --seeds 1 2 --bits 4/8 --rounding nearest --bias-correction --edge-bits 8 --equalize --weight-group 16
  run --seeds 1 2 --bits 4/8 $GROUPED --weight-group 16
fi
