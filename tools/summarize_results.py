"""The grid's summary table and synthetic-vs-random lines as markdown (``intasr.tables.summary_lines``):

    .venv/bin/python tools/summarize_results.py results/grid.csv results/beyond.csv
    .venv/bin/python tools/summarize_results.py results/conformer_grid.csv     # PER (phoneme model)
"""
from __future__ import annotations

import sys

from intasr.tables import summary_lines


def main(paths: list[str]) -> int:
    print("\n".join(summary_lines(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["build/results/grid.csv", "build/results/beyond.csv"]))
