"""From result folders to report rows: scores, retention, latency, speedup, and where each number came from.

Reads only files (through `vistog_bench.results`, which checks every record against its schema); nothing here runs a
model. Full budget, retention, speedup, its interval and which profile records count come from
`vistog_bench.analysis`, the derivation `check` uses too; this module adds what only a report needs:

- Accuracy and latency each take the full budget from their own run (its cells, its measured profile records).
  Average retention = the mean over the tasks where both a score and a full-budget score exist.
- Latency of a row: the headline `analysis.Measurement` of its method@budget (controlled: batch size 1, a compiled
  path before an eager one, the longest forced output; else the medians over its requests).
- TTFT: the profiler's measured time to first token (`ttft_ms`: request start -> first token's logits,
  preprocessing and glue included) when every row has it; else vision + grouping + projector + prefill (CPU
  preprocessing excluded, a missing grouping or projector stage counts 0, a missing prefill makes it n/a). One
  definition per table; the provenance line says which.
- Speedup: divided by the full-budget measurement made the same way where there is one (else the full budget's
  headline measurement, and a note says so).
- Prefill TFLOPs = analytic `flops["prefill"]` / 1e12 (counted FLOPs when no analytic value). KV cache and peak
  memory in MiB (peak = the largest value in `peak_memory_bytes`). Joules per sample = energy_j / batch size.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis import (
    FULL_BUDGET_METHOD,
    MEASURED_KINDS,
    FullBudget,
    Headline,
    Measurement,
    Speedup,
    finite,
    full_budget,
    headline_measurement,
    headline_metric,
    headline_value,
    measurements,
    median,
    reference_measurement,
    retention,
    same_hardware,
    speedup,
)
from ..errors import UsageError
from ..results import (
    FAILED_PREFIX,
    STATUS_OK,
    STATUS_OOM,
    CellResult,
    ProfileRecord,
    RunManifest,
    load_run,
)

MIB = 2.0**20
LATENCY_STAGES = ("preprocess", "vision", "grouping", "projector", "prefill", "decode")
TTFT_STAGES = ("vision", "grouping", "projector", "prefill")


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunData:
    """One run folder, read and checked."""

    path: Path
    manifest: RunManifest
    cells: tuple[CellResult, ...]
    profile: tuple[ProfileRecord, ...]

    @property
    def run_id(self) -> str:
        return str(self.manifest.run_id)


def read_run(path: str | Path) -> RunData:
    """Open and check one run folder; any missing or malformed file raises `UsageError` naming it."""
    run = load_run(path)
    cells = run.merge()  # the cells workers recorded so far (a run still going, or one no coordinator merged)
    for line in run.unfinished():
        print(f"vistog-bench report: {run.path}: {line}", file=sys.stderr)
    return RunData(run.path, run.manifest(), tuple(cells), tuple(run.profile()))


def read_runs(paths: Sequence[str | Path]) -> list[RunData]:
    if not paths:
        raise UsageError("give at least one run folder")
    runs = [read_run(p) for p in paths]
    ids = [r.run_id for r in runs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"run folders given twice (same run id): {', '.join(duplicates)}")
    if not any(r.cells or r.profile for r in runs):
        raise UsageError(
            f"nothing to report: no metrics.json cells and no profile.jsonl records in {', '.join(map(str, paths))}"
        )
    return runs


# ---------------------------------------------------------------------------------------------------------------
# setup (provenance) of a number
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """Where a number was measured. Fields are text for display; None where unknown."""

    device: str | None = None
    dtype: str | None = None
    path: str | None = None
    batch_size: str | None = None
    output_tokens: str | None = None

    def label(self) -> str:
        parts = [
            self.device or "device ?",
            self.path or "path ?",
            self.dtype or "dtype ?",
            f"bs {self.batch_size or '?'}",
        ]
        if self.output_tokens:
            parts.append(f"out {self.output_tokens}")
        return " · ".join(parts)

    def comparable(self) -> tuple:
        """What must match for latency numbers to be compared (output length left out: reported, not a setup)."""
        return (self.device, self.path, self.dtype, self.batch_size)


def _find(obj: Any, *names: str, depth: int = 3) -> Any:
    """First value of any of `names` in a nested dict (breadth first)."""
    level = [obj]
    for _ in range(depth):
        nxt = []
        for item in level:
            if not isinstance(item, Mapping):
                continue
            for name in names:
                if item.get(name) not in (None, ""):
                    return item[name]
            nxt.extend(v for v in item.values() if isinstance(v, Mapping))
        level = nxt
    return None


GENERIC_DEVICE = re.compile(r"^(cuda|cpu|mps|xpu|meta)(:\d+)?$")


def manifest_device(manifest: RunManifest) -> str | None:
    """The device's name from the manifest: NVML's name, torch's, else `cpu (<host CPU>)`."""
    facts = manifest.device
    name = _find(facts, "name", "torch_device_name", "device_name", "gpu", depth=1)
    if name:
        return str(name)
    device = facts.get("device") or _find(manifest.config, "device")
    host = facts.get("host_cpu")
    if device and host and str(device).startswith("cpu"):
        return f"{device} ({host})"
    return None if device is None else str(device)


def record_device(record: ProfileRecord, device_name: str | None) -> str:
    """A record's device, named: records say `cuda:0`; the run's manifest says which GPU that was."""
    if device_name and GENERIC_DEVICE.match(str(record.device)):
        return device_name
    return str(record.device)


def manifest_setup(manifest: RunManifest) -> Setup:
    device = manifest_device(manifest)
    dtype = _find(manifest.config, "dtype", "torch_dtype")
    path = _find(manifest.config, "path", "execution_path")
    batch = _find(manifest.config, "batch_size")
    out = _find(manifest.config, "max_new_tokens", "output_tokens")
    return Setup(*(None if v is None else str(v) for v in (device, dtype, path, batch, out)))


# ---------------------------------------------------------------------------------------------------------------
# efficiency of one method@budget
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Efficiency:
    """Latency, FLOPs, memory and energy of one measurement of a method@budget in one run (medians over its
    records: one controlled record is its own median)."""

    run_id: str
    method: str
    budget: int
    measurement: Measurement
    setup: Setup
    visual_tokens: float | None  # per sample (records hold request totals, summed over the batch)
    stage_ms: dict[str, float | None]
    measured_ttft_ms: float | None  # the profiler's own request start -> first token's logits (ProfileRecord.ttft_ms)
    decode_per_token_ms: float | None
    total_ms: float | None
    total_spread_ms: tuple[float, float] | None  # (p10, p90) of a single controlled record's repeats
    prefill_tflops: float | None
    flops_source: str | None  # "analytic" | "counted"
    kv_cache_mib: float | None
    peak_memory_mib: float | None
    joules_per_sample: float | None

    @property
    def kind(self) -> str:
        return self.measurement.kind

    @property
    def n_records(self) -> int:
        return len(self.measurement.records)

    @property
    def stage_sum_ttft_ms(self) -> float | None:
        """vision + grouping + projector + prefill (None without a prefill time)."""
        if self.stage_ms.get("prefill") is None:
            return None
        return sum(self.stage_ms.get(s) or 0.0 for s in TTFT_STAGES)

    def ttft_ms(self, measured: bool) -> float | None:
        return self.measured_ttft_ms if measured else self.stage_sum_ttft_ms

    @property
    def source(self) -> str:
        if self.kind == "controlled":
            return "controlled"
        return f"request median (n={self.n_records})"


def _per_sample(total: Any, record: ProfileRecord) -> float | None:
    """Token counts in records are request totals, summed over the batch's prompts."""
    number = finite(total)
    return None if number is None else number / record.batch_size


def _distinct_text(values: Iterable[Any]) -> str | None:
    seen = sorted({str(v) for v in values if v is not None})
    return "/".join(seen) if seen else None


def _measured_setup(measurement: Measurement, device_name: str | None) -> Setup:
    records = measurement.records
    output = median(_per_sample(r.output_tokens, r) for r in records)
    forced = measurement.kind == "controlled"
    return Setup(
        _distinct_text(record_device(r, device_name) for r in records),
        _distinct_text(r.dtype for r in records),
        _distinct_text(r.execution_path for r in records),
        _distinct_text(r.batch_size for r in records),
        None if output is None else (f"{output:g} (forced)" if forced else f"median {output:g}"),
    )


def _prefill_flops(records: Sequence[ProfileRecord]) -> tuple[float | None, str | None]:
    """The median prefill FLOPs of the first source any record has: analytic, else counted."""
    for source, table in (("analytic", "flops"), ("counted", "counted_flops")):
        value = median(getattr(r, table).get("prefill") for r in records)
        if value is not None:
            return value, source
    return None, None


def _total_spread(records: Sequence[ProfileRecord]) -> tuple[float, float] | None:
    if len(records) != 1 or not isinstance(records[0].stats.get("total"), dict):
        return None
    total = records[0].stats["total"]
    p10, p90 = finite(total.get("p10")), finite(total.get("p90"))
    return (p10, p90) if p10 is not None and p90 is not None else None


def _mib(value: float | None) -> float | None:
    return None if value is None else value / MIB


def efficiency_of(measurement: Measurement, run: RunData) -> Efficiency:
    """The report's numbers for one measurement (the medians over its records)."""
    records = measurement.records
    flops, flops_source = _prefill_flops(records)
    peaks = median(
        max((finite(v) for v in r.peak_memory_bytes.values() if finite(v) is not None), default=None) for r in records
    )
    return Efficiency(
        run_id=run.run_id,
        method=records[0].method,
        budget=records[0].budget,
        measurement=measurement,
        setup=_measured_setup(measurement, manifest_device(run.manifest)),
        visual_tokens=median(_per_sample(r.visual_tokens, r) for r in records),
        stage_ms={s: median(getattr(r, f"{s}_ms") for r in records) for s in LATENCY_STAGES},
        measured_ttft_ms=median(r.ttft_ms for r in records),
        decode_per_token_ms=median(r.decode_per_token_ms for r in records),
        total_ms=measurement.total_ms,
        total_spread_ms=_total_spread(records),
        prefill_tflops=None if flops is None else flops / 1e12,
        flops_source=flops_source,
        kv_cache_mib=_mib(median(r.kv_cache_bytes for r in records)),
        peak_memory_mib=_mib(peaks),
        joules_per_sample=median(_per_sample(r.energy_j, r) for r in records),
    )


def stage_efficiencies(run: RunData) -> list[Efficiency]:
    """Every measurement of a run, for the latency-by-stage table."""
    keys = dict.fromkeys((r.method, r.budget) for r in run.profile if r.kind in MEASURED_KINDS)
    return [efficiency_of(m, run) for method, budget in keys for m in measurements(run.profile, method, budget)]


# ---------------------------------------------------------------------------------------------------------------
# main-table rows
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """One task's headline score in one row; `status` is `ok`, `oom`, `failed`, `missing` or `n/a` (the cell ran, but
    its headline metric is NaN or absent)."""

    status: str
    value: float | None = None
    headline: Headline | None = None
    retention: float | None = None  # percent
    reason: str | None = None  # the failure reason, for a footnote


@dataclass
class Row:
    method: str
    budget: int
    run_ids: tuple[str, ...]
    label_run: bool  # True when the row stands for one of several runs that measured the same method@budget
    scores: dict[str, Score] = field(default_factory=dict)
    avg_retention: float | None = None
    n_retention: int = 0
    efficiency: Efficiency | None = None
    speedup: Speedup | None = None
    setup: Setup = field(default_factory=Setup)
    full_budget: bool = False
    budget_rule: str | None = None  # CellResult.budget_rule of the row's cells (None: LLaVA-1.5 tokens per image)
    tokens: tuple[float, float] | None = None  # mean visual tokens per image: (received, unreduced), where recorded
    budget_convention: str | None = None  # CellResult.budget_convention (llm_input | after_layer | layer_mean)
    attention: str | None = None  # CellResult.attention: the kernels the row's cells ran
    accuracy_run: str | None = None  # the run the scores come from
    efficiency_run: str | None = None  # the run the latency numbers come from

    @property
    def label(self) -> str:
        base = f"{self.method}@{self.budget}"
        return f"{base} [{self.run_ids[0]}]" if self.label_run else base

    @property
    def visual_tokens(self) -> float:
        """Visual tokens one image gives the LLM: the mean received where the cells recorded it (families: it
        depends on the image), else the budget (a video prompt has one budget per frame)."""
        return self.tokens[0] if self.tokens else self.budget


def _cell_status(cell: CellResult) -> tuple[str, str | None]:
    if cell.status == STATUS_OK:
        return "ok", None
    if cell.status == STATUS_OOM:
        return "oom", None
    if cell.status.startswith(FAILED_PREFIX):
        return "failed", cell.status[len(FAILED_PREFIX) :]
    return "failed", cell.status


@dataclass
class Accuracy:
    """One run's scores for one method@budget."""

    run_id: str
    scores: dict[str, Score]
    full_budget: bool
    budget_rule: str | None = None
    tokens: tuple[float, float] | None = None
    budget_convention: str | None = None
    attention: str | None = None


def _mean_tokens(cells: Sequence[CellResult]) -> tuple[float, float] | None:
    """(received, unreduced) visual tokens per image over the cells that recorded them, weighted by samples scored."""
    having = [
        c
        for c in cells
        if c.ok and c.n_samples and c.mean_visual_tokens is not None and c.mean_visual_tokens_unreduced is not None
    ]
    if not having:
        return None
    weight = sum(c.n_samples for c in having)
    return (
        sum(c.mean_visual_tokens * c.n_samples for c in having) / weight,
        sum(c.mean_visual_tokens_unreduced * c.n_samples for c in having) / weight,
    )


@dataclass
class ReportData:
    runs: list[RunData]
    tasks: list[str]
    rows: list[Row]
    notes: list[str]

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]


def _task_headlines(cells: Mapping[tuple[str, str, int], CellResult], full: FullBudget) -> dict[str, Headline]:
    """One headline metric per task, chosen by name: the one most of the task's ok cells name (the full-budget
    cell's choice first on a tie), so a cell whose headline is NaN or was dropped shows n/a rather than some other
    metric under that column."""
    votes: dict[str, dict[Headline, int]] = {}
    ordered = sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2]) != (full.method, full.budget))
    for (task, _, _), cell in ordered:
        headline = headline_metric(task, cell.metrics) if cell.ok else None
        if headline is not None:
            counts = votes.setdefault(task, {})
            counts[headline] = counts.get(headline, 0) + 1
    return {task: max(counts, key=counts.get) for task, counts in votes.items()}  # max keeps the first on ties


def _accuracy_parts(run: RunData, notes: list[str]) -> dict[tuple[str, int], Accuracy]:
    cells = {(c.task, c.method, c.budget): c for c in run.cells}  # last record of a key wins
    full = full_budget((m, b) for _, m, b in cells)
    if full is None:
        return {}
    if full.stand_in:
        notes.append(full.note(run.run_id, "cells"))
    headlines = _task_headlines(cells, full)
    reference: dict[str, float] = {}
    for (task, method, budget), cell in cells.items():
        if (method, budget) != (full.method, full.budget) or not cell.ok or task not in headlines:
            continue
        value = headline_value(headlines[task], cell.metrics)
        if retention(value, value) is not None:  # a finite, nonzero score can be divided by
            reference[task] = value
    for task in sorted({t for t, _, _ in cells} - set(reference)):
        notes.append(
            f"run {run.run_id}: no usable full-budget ({full.method}@{full.budget}) score for {task}: retention n/a"
        )
    parts: dict[tuple[str, int], Accuracy] = {}
    for (task, method, budget), cell in cells.items():
        part = parts.setdefault(
            (method, budget), Accuracy(run.run_id, {}, (method, budget) == (full.method, full.budget))
        )
        status, reason = _cell_status(cell)
        if status != "ok":
            part.scores[task] = Score(status, reason=reason)
            continue
        if task not in headlines:
            part.scores[task] = Score("failed", reason="no numeric metric in the cell")
            continue
        headline = headlines[task]
        value = headline_value(headline, cell.metrics)
        if value is None:
            part.scores[task] = Score(
                "n/a", headline=headline, reason=f"headline metric {headline.metric} is NaN or missing in this cell"
            )
            continue
        kept = retention(value, reference.get(task))
        if kept is not None and not same_hardware(run.cells, (method, budget), (full.method, full.budget)):
            kept = None  # the reference cell ran on other hardware (hardware_lines says so)
        part.scores[task] = Score("ok", value, headline, None if kept is None else 100.0 * kept)
    for (method, budget), part in parts.items():
        mine = [c for (_, m, b), c in cells.items() if (m, b) == (method, budget)]
        part.budget_rule = next((c.budget_rule for c in mine if c.budget_rule), None)
        part.tokens = _mean_tokens(mine)
        part.budget_convention = next((c.budget_convention for c in mine if c.budget_convention), None)
        part.attention = next((c.attention for c in mine if c.attention), None)
    return parts


def _efficiency_parts(run: RunData, notes: list[str]) -> dict[tuple[str, int], tuple[Efficiency, Speedup | None, bool]]:
    others = sorted({r.kind for r in run.profile if r.kind not in MEASURED_KINDS})
    if others:
        count = sum(r.kind not in MEASURED_KINDS for r in run.profile)
        notes.append(
            f"run {run.run_id}: {count} profile record(s) of kind {', '.join(others)} left out "
            "(no measured times; `vistog-bench profile --analytic` prints them)"
        )
    keys = {(r.method, r.budget) for r in run.profile if r.kind in MEASURED_KINDS}
    full = full_budget(keys)
    if full is None:
        return {}
    if full.stand_in:
        notes.append(full.note(run.run_id, "profile records"))
    full_measurements = measurements(run.profile, full.method, full.budget)
    parts = {}
    for method, budget in sorted(keys):
        eff = efficiency_of(headline_measurement(measurements(run.profile, method, budget)), run)
        reference, same_way = reference_measurement(full_measurements, eff.measurement)
        ratio = speedup(reference, eff.measurement) if reference is not None else None
        if ratio is not None and not same_hardware(run.cells, (method, budget), (full.method, full.budget)):
            ratio = None  # timings of two machines: never divided (hardware_lines says so)
        if ratio is not None and not same_way:
            base = efficiency_of(reference, run)
            notes.append(
                f"run {run.run_id}: speedup of {method}@{budget} divides {base.setup.label()} "
                f"by {eff.setup.label()} (no full-budget record measured the same way)"
            )
        parts[(method, budget)] = (eff, ratio, (method, budget) == (full.method, full.budget))
    return parts


def method_order(method: str) -> tuple[int, str]:
    """`none` first, then baselines alphabetically, `vistog` (ours) last, as papers order their tables."""
    return (0 if method == FULL_BUDGET_METHOD else 2 if method == "vistog" else 1, method)


def build_report_data(runs: list[RunData]) -> ReportData:
    notes: list[str] = []
    tasks: list[str] = []
    for run in runs:
        for cell in run.cells:
            if cell.task not in tasks:
                tasks.append(cell.task)
    accuracy = {run.run_id: _accuracy_parts(run, notes) for run in runs}
    efficiency = {run.run_id: _efficiency_parts(run, notes) for run in runs}
    setups = {run.run_id: manifest_setup(run.manifest) for run in runs}
    keys = sorted(
        {k for parts in list(accuracy.values()) + list(efficiency.values()) for k in parts},
        key=lambda k: (-k[1], method_order(k[0])),
    )
    rows: list[Row] = []
    for key in keys:
        acc_runs = [rid for rid in accuracy if key in accuracy[rid]]
        eff_runs = [rid for rid in efficiency if key in efficiency[rid]]
        if len(acc_runs) <= 1 and len(eff_runs) <= 1:
            groups = [(tuple(dict.fromkeys(acc_runs + eff_runs)), acc_runs[:1], eff_runs[:1], False)]
        else:  # several runs measured the same method@budget: one row per run, never averaged together
            groups = [
                ((rid,), [rid] if rid in acc_runs else [], [rid] if rid in eff_runs else [], True)
                for rid in dict.fromkeys(acc_runs + eff_runs)
            ]
        for run_ids, acc_ids, eff_ids, label_run in groups:
            row = Row(key[0], key[1], run_ids, label_run)
            if acc_ids:
                part = accuracy[acc_ids[0]][key]
                row.scores = part.scores
                row.full_budget = part.full_budget
                row.budget_rule, row.tokens = part.budget_rule, part.tokens
                row.budget_convention, row.attention = part.budget_convention, part.attention
                retentions = [s.retention for s in part.scores.values() if s.retention is not None]
                row.n_retention = len(retentions)
                row.avg_retention = statistics.fmean(retentions) if retentions else None
                # accuracy alone: only device and dtype matter (the eval batch size is no latency setup)
                row.setup = Setup(setups[acc_ids[0]].device, setups[acc_ids[0]].dtype)
                row.accuracy_run = acc_ids[0]
            if eff_ids:
                row.efficiency, row.speedup, is_full = efficiency[eff_ids[0]][key]
                row.full_budget = row.full_budget or is_full
                row.setup = row.efficiency.setup
                row.efficiency_run = eff_ids[0]
            rows.append(row)
    return ReportData(runs, tasks, rows, list(dict.fromkeys(notes)))
