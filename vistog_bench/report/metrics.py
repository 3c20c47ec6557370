"""What the report prints beside the headline scores (`vistog_bench.analysis` chooses those): standard errors by
metric name, and the published-table column a task belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..analysis import finite, strip_filter


def stderr_values(stderr: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Metric name -> standard error, from `CellResult.stderr` (keys with or without `_stderr` and a filter) and from
    any `<metric>_stderr,<filter>` entries left in the metrics themselves."""
    out: dict[str, float] = {}
    sources = [stderr] + ([metrics] if metrics else [])
    for source in sources:
        for key, value in source.items():
            name = strip_filter(key)
            if source is metrics and not name.endswith("_stderr"):
                continue
            name = name.removesuffix("_stderr")
            number = finite(value)
            if number is not None:
                out.setdefault(name, number)
    return out


def benchmark_family(task: str, families: tuple[str, ...]) -> str | None:
    """The published-table column a task belongs to: `textvqa_val` -> `textvqa`, `pope_pop` -> `pope`."""
    task_l = task.lower()
    for family in sorted(families, key=len, reverse=True):
        fam = family.lower()
        if task_l == fam or task_l.startswith(fam + "_"):
            return family
    return None
