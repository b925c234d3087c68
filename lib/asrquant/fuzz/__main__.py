"""python -m asrquant.fuzz run --per-reader N --out results/fuzz.json (see asrquant/fuzz/__init__.py)."""
import sys

from . import main

sys.exit(main())
