"""python -m asrquant.cli ...: the `asrquant` command."""
import sys

from . import main

sys.exit(main())
