#!/bin/bash
# Issue 31: the chosen defaults and the 4-bit runner-up rerun on test-other, 3 seeds, on this machine,
# to set beside the rows another CPU wrote (results/beyond_adaround.csv, results/grid.csv): the same
# seeds through other float kernels (synthetic batches, learned rounding) give the spread a CPU adds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/recipe_report_$(PYTHONPATH=${PYTHONPATH:-} "$PY" -c 'from intasr.cpu import kernel_family; print(kernel_family())').csv}
run() { "$PY" tools/run_adaround.py --criterion test --seeds 0 1 2 --threads "${THREADS:-2}" --out "$OUT" "$@"; }
run --bits 8/8 --rounding nearest
run --bits 6/8 --rounding nearest --bias-correction
run --bits 4/8 --rounding nearest --bias-correction --edge-bits 8 --equalize --weight-group 16
run --bits 4/8 --rounding adaround --iterations 100 --symmetric --edge-bits 8 --equalize --weight-group 16
