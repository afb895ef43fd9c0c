"""`python -m edge.cli` runs the edge-gate command."""

import sys

from edge.cli import main

sys.exit(main())
