"""`vistog-bench check` and `vistog-bench baseline update`: hold a run to a committed baseline, cell by cell.

A run is reduced to *values* (`values.derive_values`: per cell (task, method, budget) a flat map
`"<category>/<name>" -> float`, derived through `vistog_bench.analysis` exactly as the report derives its numbers).
A baseline file (`baseline.py`) stores the values of the run it was made from, so a check is the same derivation on
the new run followed by a key-by-key comparison (`compare.py`) under named tolerances (`tolerances.py`), rendered as
a table, a Markdown summary and JUnit XML (`render.py`). Commands: `cli.py` (check), `baseline_cli.py`.

    from vistog_bench.regress import check_run
    report = check_run("results/<run_id>", "results/baselines/cpu-default.json")
    report.exit_code, report.failures, report.to_junit_xml()
"""

from __future__ import annotations

from .baseline import (
    Baseline,
    BaselineCell,
    build_baseline,
    load_baseline,
    parse_baseline,
    write_baseline,
)
from .cli import add_arguments, main
from .compare import CheckReport, Finding, check_run, compare, judge
from .tolerances import Tolerance, Tolerances, default_tolerances, load_tolerances
from .values import derive_values

__all__ = [
    "Baseline",
    "BaselineCell",
    "CheckReport",
    "Finding",
    "Tolerance",
    "Tolerances",
    "add_arguments",
    "build_baseline",
    "check_run",
    "compare",
    "default_tolerances",
    "derive_values",
    "judge",
    "load_baseline",
    "load_tolerances",
    "main",
    "parse_baseline",
    "write_baseline",
]
