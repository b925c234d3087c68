"""python -m intasr.cli ...: the `intasr` command."""
import sys

from . import main

sys.exit(main())
