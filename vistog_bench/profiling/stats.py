"""Summary statistics over repeats, as optimum-benchmark's latency tracker and vLLM's `bench latency` report them:
mean, p50 (= median), p90, p95, p99, sample standard deviation and coefficient of variation; p10 as well (the
lower end of the spread the report draws)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (10, 50, 90, 95, 99)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """{"n", "mean", "median", "p10", "p50", "p90", "p95", "p99", "stdev", "cv"}: percentiles by linear
    interpolation (numpy's default); stdev with n - 1 (0 with one value); cv = stdev / mean."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("summary of no values")
    mean = float(array.mean())
    stdev = float(array.std(ddof=1)) if array.size > 1 else 0.0
    summary = {"n": int(array.size), "mean": mean}
    summary.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True)})
    summary.update(median=summary["p50"], stdev=stdev, cv=stdev / mean if mean else 0.0)
    return summary


__all__ = ["summarize", "PERCENTILES"]
