"""python -m intasr.fuzz run --per-reader N --out results/fuzz.json (see intasr/fuzz/__init__.py)."""
import sys

from . import main

sys.exit(main())
