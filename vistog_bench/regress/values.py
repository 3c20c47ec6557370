"""A run reduced to the values `check` compares: per cell, a flat map `"<category>/<name>" -> float`.

    accuracy/<metric,filter>   CellResult.metrics as lmms-eval writes them                         higher (default)
    retention/<metric,filter>  analysis.retention: score / the run's full-budget score, same task   higher
    speedup/total_ms[<group>]  analysis.speedup of the measurement <group> (same way only)          higher
    flops/<stage>[<group>]     analytic FLOPs from ProfileRecord.flops (+ `total` if absent)      equal (exact)
    memory/<field>[<group>]    peak_memory_bytes per key and kv_cache_bytes, max over records      lower
    latency/total_ms[<group>]  absolute median total_ms; off by default (only pinned GPU runners)   lower
    samples/n_samples          CellResult.n_samples: a different sample set makes accuracy moot     equal

Full budget, retention, speedup and the profile records a cell's measurements are made of come from
`vistog_bench.analysis` (the report uses the same); `<group>` is `analysis.Measurement.label` (`request`, or
`controlled,<execution path>,bs<batch size>[,out<output tokens>]`). FLOPs of a request group are the mean per
record (a fixed total over the served prompts), of a controlled group the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from ..analysis import (
    KIND_REQUEST,
    MEASURED_KINDS,
    Measurement,
    finite,
    full_budget,
    measurements,
    reference_measurement,
    retention,
    speedup,
)
from ..results import CellKey, CellResult, ProfileRecord


def _flops_values(measurement: Measurement) -> dict[str, float]:
    records = measurement.records
    summarise = statistics.fmean if measurement.kind == KIND_REQUEST else statistics.median
    keys = sorted({k for r in records for k, v in r.flops.items() if finite(v) is not None})
    flops = {
        key: float(summarise([finite(r.flops.get(key)) for r in records if finite(r.flops.get(key)) is not None]))
        for key in keys
    }
    if flops and "total" not in flops:
        flops["total"] = sum(flops.values())
    return {f"flops/{key}[{measurement.label}]": value for key, value in flops.items()}


def _memory_values(measurement: Measurement) -> dict[str, float]:
    records, group = measurement.records, measurement.label
    values: dict[str, float] = {}
    for key in sorted({k for r in records for k, v in r.peak_memory_bytes.items() if finite(v) is not None}):
        peaks = [finite(r.peak_memory_bytes.get(key)) for r in records]
        values[f"memory/peak_memory_bytes.{key}[{group}]"] = max(p for p in peaks if p is not None)
    kv = [n for n in (finite(r.kv_cache_bytes) for r in records) if n is not None]
    if kv:
        values[f"memory/kv_cache_bytes[{group}]"] = max(kv)
    return values


def _measurement_values(measurement: Measurement) -> dict[str, float]:
    values = {} if measurement.total_ms is None else {f"latency/total_ms[{measurement.label}]": measurement.total_ms}
    return {**values, **_flops_values(measurement), **_memory_values(measurement)}


def _score_values(cell: CellResult, reference: CellResult | None) -> dict[str, float]:
    values = {f"accuracy/{k}": finite(v) for k, v in cell.metrics.items() if finite(v) is not None}
    if reference is not None and reference.ok:
        for metric, score in cell.metrics.items():
            kept = retention(score, reference.metrics.get(metric))
            if kept is not None:
                values[f"retention/{metric}"] = kept
    return values


def derive_values(cells: list[CellResult], profile: Iterable[ProfileRecord]) -> dict[CellKey, dict[str, float]]:
    """Every comparable value of every cell: `{cell: {"<category>/<name>": value}}` (see the module docstring)."""
    profile = list(profile)
    by_key = {c.key: c for c in cells}
    scores_full = full_budget((c.method, c.budget) for c in cells)
    times_full = full_budget((r.method, r.budget) for r in profile if r.kind in MEASURED_KINDS)
    derived: dict[CellKey, dict[str, float]] = {}
    for cell in cells:
        values: dict[str, float] = {"samples/n_samples": float(cell.n_samples)}
        if cell.ok:
            values.update(_score_values(cell, by_key.get(CellKey(cell.task, scores_full.method, scores_full.budget))))
            full = measurements(profile, times_full.method, times_full.budget, cell.task) if times_full else []
            for measurement in measurements(profile, cell.method, cell.budget, cell.task):
                values.update(_measurement_values(measurement))
                reference, same_way = reference_measurement(full, measurement)
                ratio = speedup(reference, measurement) if same_way else None
                if ratio is not None:
                    values[f"speedup/total_ms[{measurement.label}]"] = ratio.value
        derived[cell.key] = values
    return derived


__all__ = ["derive_values"]
