"""`python -m vistog_bench.train ...` (e.g. `accelerate launch -m vistog_bench.train`, `torchrun -m ...`)."""

from .cli import run_cli

raise SystemExit(run_cli())
