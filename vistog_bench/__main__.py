"""`python -m vistog_bench ...`: the `vistog-bench` command (worker processes start it this way)."""

import sys

from .cli import main

sys.exit(main())
