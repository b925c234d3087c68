#!/bin/bash
# Issue 30: the hama Conformer's recipes below 8 bits, chosen label-free as tools/select_recipes.sh
# chooses QuartzNet's (intasr.selection): every candidate quantized from the synthetic batch of seed 0
# and scored by its phoneme errors against the float model's own transcripts of the untranscribed
# train-clean-100 utterances past the real-calibration head; then the best two of each width on seeds
# 1 and 2, and the default is the one with the fewest errors over the three seeds (selection.choose).
# The 4-bit candidates also measure which parts stay at 8 bits (--edge-parts) and what each costs.
#   tools/select_conformer_recipes.sh [stage]   # 1: every candidate, seed 0; 2: seeds 1 2 of the finalists;
#                                               # report: the finalists on test-other (the paper-method rows: the grid)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-build/conformer_hama.nemo}
OUT=${OUT:-results/conformer_recipe_selection.csv}
run() { "$PY" tools/run_adaround.py --model "$MODEL" --criterion "${CRITERION:-fp32-agreement}" --threads "${THREADS:-2}" --eval-batch-size 8 --out "$OUT" "$@"; }
LEARN="--rounding adaround --iterations 100 --symmetric"
if [ "${1:-1}" = 1 ]; then
  run --seeds 0 --bits 8/8 6/8 4/8 --rounding nearest
  run --seeds 0 --bits 8/8 6/8 4/8 --rounding nearest --bias-correction
  run --seeds 0 --bits 8/8 $LEARN
  run --seeds 0 --bits 6/8 $LEARN --edge-bits 8
  run --seeds 0 --bits 6/8 $LEARN
  run --seeds 0 --bits 4/8 --rounding nearest --bias-correction --edge-bits 8 --weight-group 16
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 16
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 32
  run --seeds 0 --bits 4/8 $LEARN --weight-group 16
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts subsampling
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts output
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts subsampling output attention
  run --seeds 0 --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --depthwise-bits 8
fi
# the finalists as stage 1 ranked them (results/README.md), with every choice of 8-bit parts of the
# grouped 4-bit recipe (what each costs); the paper's W8A8 is run apart (its test-other rows: the grid's)
finalists() {
  run "$@" --bits 8/8 --rounding nearest --bias-correction
  run "$@" --bits 6/8 $LEARN --edge-bits 8
  run "$@" --bits 6/8 $LEARN
  run "$@" --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts subsampling output attention
  run "$@" --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --depthwise-bits 8
  run "$@" --bits 4/8 $LEARN --edge-bits 8 --weight-group 16
  run "$@" --bits 4/8 --rounding nearest --bias-correction --edge-bits 8 --weight-group 16
  run "$@" --bits 4/8 $LEARN --weight-group 16
  run "$@" --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts subsampling
  run "$@" --bits 4/8 $LEARN --edge-bits 8 --weight-group 16 --edge-parts output
}
if [ "${1:-2}" = 2 ]; then
  run --seeds 1 2 --bits 8/8 --rounding nearest
  finalists --seeds 1 2
fi
if [ "${1:-}" = report ]; then   # the same candidates on test-other, seeds 0 1 2: the report, which chose nothing
  export CRITERION=test OUT=${REPORT:-results/conformer_recipes.csv}
  finalists --seeds 0 1 2
fi
