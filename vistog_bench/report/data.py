"""From result folders to report rows: scores, retention, latency, speedup, and where each number came from.

Reads only files (through `vistog_bench.results`); nothing here runs a model.

Definitions (docs/reports.md repeats them for users):
- Full budget of a run: method `none` at the largest budget it has; a run without `none` uses its largest budget
  (and the report says so). Accuracy and latency each take the full budget from their own run.
- Retention of a task = score / the same run's full-budget score of that task; average retention = the mean over the
  tasks where both exist.
- Latency: a `kind="controlled"` record at batch size 1 when the run has one for that method@budget (a compiled one
  before an eager one, the last written when several remain), else the medians over its `kind="request"` records.
- TTFT: the profiler's measured time to first token (`ttft_ms`: request start -> first token's logits,
  preprocessing and glue included) when every row has it; else vision + grouping + projector + prefill (CPU
  preprocessing excluded, a missing grouping or projector stage counts 0, a missing prefill makes it n/a). One
  definition per table; the provenance line says which.
- Speedup = full-budget total_ms / this total_ms, both from the same run and, where possible, the same kind, path
  and batch size.
- Prefill TFLOPs = analytic `flops["prefill"]` / 1e12 (counted FLOPs when no analytic value). KV cache and peak
  memory in MiB (peak = the largest value in `peak_memory_bytes`). Joules per sample = energy_j / batch size.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from .metrics import Headline, as_number, headline_metric, headline_value

FULL_METHOD = "none"
MIB = 2.0**20
LATENCY_STAGES = ("preprocess", "vision", "grouping", "projector", "prefill", "decode")
TTFT_STAGES = ("vision", "grouping", "projector", "prefill")
PATH_PREFERENCE = ("compiled", "eager")
MEASURED_KINDS = ("controlled", "request")  # other kinds (e.g. "analytic": FLOPs and roofline floors, no times) are
# not latency measurements and stay out of the tables; a note counts them


# ---------------------------------------------------------------------------------------------------------------
# loading and validation
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


def _check(condition: bool, source: Path, what: str) -> None:
    if not condition:
        raise UsageError(f"malformed result file {source}: {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_cell(cell: CellResult, source: Path) -> None:
    where = f"cell {cell.task!r} {cell.method!r} {cell.budget!r}"
    _check(isinstance(cell.task, str) and isinstance(cell.method, str), source, f"{where}: task and method must be text")
    _check(_is_int(cell.budget), source, f"{where}: budget must be an integer")
    _check(isinstance(cell.status, str), source, f"{where}: status must be text")
    _check(isinstance(cell.metrics, dict) and isinstance(cell.stderr, dict), source, f"{where}: metrics and stderr must be objects")


def _validate_record(record: ProfileRecord, source: Path) -> None:
    where = f"profile record {record.kind!r} {record.method!r} {record.budget!r}"
    _check(isinstance(record.kind, str), source, f"{where}: kind must be text")
    _check(isinstance(record.method, str) and _is_int(record.budget), source, f"{where}: method text, budget integer")
    _check(_is_int(record.batch_size) and record.batch_size >= 1, source, f"{where}: batch_size must be a positive integer")
    for stage in LATENCY_STAGES + ("total", "decode_per_token"):
        value = getattr(record, f"{stage}_ms")
        _check(value is None or as_number(value) is not None, source, f"{where}: {stage}_ms must be a number or null")
    for name in ("visual_tokens", "text_tokens", "output_tokens", "kv_cache_bytes", "energy_j"):
        value = getattr(record, name)
        _check(value is None or as_number(value) is not None, source, f"{where}: {name} must be a number or null")
    for name in ("flops", "counted_flops", "peak_memory_bytes", "stats"):
        _check(isinstance(getattr(record, name), dict), source, f"{where}: {name} must be an object")


def read_run(path: str | Path) -> RunData:
    """Open and check one run folder; any missing or malformed file raises `UsageError` naming it."""
    run = load_run(path)
    manifest = run.manifest()
    _check(isinstance(manifest.config, dict) and isinstance(manifest.device, dict), run.path / "manifest.json",
           "config and device must be objects")
    cells = run.cells()
    for cell in cells:
        _validate_cell(cell, run.path / "metrics.json")
    try:
        profile = run.profile()
    except UnicodeDecodeError as exc:
        raise UsageError(f"malformed result file {run.path / 'profile.jsonl'}: {exc}") from None
    for record in profile:
        _validate_record(record, run.path / "profile.jsonl")
    return RunData(run.path, manifest, tuple(cells), tuple(profile))


def read_runs(paths: Sequence[str | Path]) -> list[RunData]:
    if not paths:
        raise UsageError("give at least one run folder")
    runs = [read_run(p) for p in paths]
    ids = [r.run_id for r in runs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"run folders given twice (same run id): {', '.join(duplicates)}")
    if not any(r.cells or r.profile for r in runs):
        raise UsageError(f"nothing to report: no metrics.json cells and no profile.jsonl records in {', '.join(map(str, paths))}")
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
        parts = [self.device or "device ?", self.path or "path ?", self.dtype or "dtype ?", f"bs {self.batch_size or '?'}"]
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
    """Latency, FLOPs, memory and energy of one method@budget in one run."""

    run_id: str
    method: str
    budget: int
    kind: str  # "controlled" or "request"
    n_records: int
    setup: Setup
    visual_tokens: float | None  # per sample (records hold request totals, summed over the batch)
    stage_ms: dict[str, float | None]
    measured_ttft_ms: float | None  # the profiler's own request start -> first token's logits (ProfileRecord.ttft_ms)
    decode_per_token_ms: float | None
    total_ms: float | None
    total_spread_ms: tuple[float, float] | None  # (p10, p90) of total, where the record has them
    prefill_tflops: float | None
    flops_source: str | None  # "analytic" | "counted"
    kv_cache_mib: float | None
    peak_memory_mib: float | None
    joules_per_sample: float | None

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


def _median(values: Iterable[Any]) -> float | None:
    numbers = [as_number(v) for v in values]
    numbers = [v for v in numbers if v is not None]
    return statistics.median(numbers) if numbers else None


def _prefill_flops(record: ProfileRecord) -> tuple[float | None, str | None]:
    for source, table in (("analytic", record.flops), ("counted", record.counted_flops)):
        value = as_number(table.get("prefill"))
        if value is not None:
            return value, source
    return None, None


def _peak_bytes(record: ProfileRecord) -> float | None:
    values = [as_number(v) for v in record.peak_memory_bytes.values()]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _distinct_text(values: Iterable[Any]) -> str | None:
    seen = sorted({str(v) for v in values if v is not None})
    return "/".join(seen) if seen else None


def _efficiency_from(records: list[ProfileRecord], run: RunData, kind: str) -> Efficiency:
    run_id, device_name = run.run_id, manifest_device(run.manifest)
    first = records[-1]
    if kind == "controlled":
        record = first
        flops, flops_source = _prefill_flops(record)
        stats_total = record.stats.get("total", {}) if isinstance(record.stats.get("total"), dict) else {}
        p10, p90 = as_number(stats_total.get("p10")), as_number(stats_total.get("p90"))
        peak = _peak_bytes(record)
        energy = as_number(record.energy_j)
        return Efficiency(
            run_id=run_id,
            method=record.method,
            budget=record.budget,
            kind=kind,
            n_records=1,
            setup=Setup(record_device(record, device_name), record.dtype, record.path, str(record.batch_size),
                        None if record.output_tokens is None else f"{_per_sample(record.output_tokens, record):g} (forced)"),
            visual_tokens=_per_sample(record.visual_tokens, record),
            stage_ms={s: as_number(getattr(record, f"{s}_ms")) for s in LATENCY_STAGES},
            measured_ttft_ms=as_number(record.ttft_ms),
            decode_per_token_ms=as_number(record.decode_per_token_ms),
            total_ms=as_number(record.total_ms),
            total_spread_ms=(p10, p90) if p10 is not None and p90 is not None else None,
            prefill_tflops=None if flops is None else flops / 1e12,
            flops_source=flops_source,
            kv_cache_mib=None if as_number(record.kv_cache_bytes) is None else record.kv_cache_bytes / MIB,
            peak_memory_mib=None if peak is None else peak / MIB,
            joules_per_sample=None if energy is None else energy / record.batch_size,
        )
    flops = [_prefill_flops(r) for r in records]
    flops_source = next((s for _, s in flops if s is not None), None)
    prefill_flops = _median(f for f, s in flops if s == flops_source)
    peak = _median(_peak_bytes(r) for r in records)
    energy = _median((as_number(r.energy_j) / r.batch_size) if as_number(r.energy_j) is not None else None for r in records)
    kv = _median(r.kv_cache_bytes for r in records)
    output = _median(_per_sample(r.output_tokens, r) for r in records)
    return Efficiency(
        run_id=run_id,
        method=first.method,
        budget=first.budget,
        kind=kind,
        n_records=len(records),
        setup=Setup(
            _distinct_text(record_device(r, device_name) for r in records),
            _distinct_text(r.dtype for r in records),
            _distinct_text(r.path for r in records),
            _distinct_text(r.batch_size for r in records),
            None if output is None else f"median {output:g}",
        ),
        visual_tokens=_median(_per_sample(r.visual_tokens, r) for r in records),
        stage_ms={s: _median(getattr(r, f"{s}_ms") for r in records) for s in LATENCY_STAGES},
        measured_ttft_ms=_median(r.ttft_ms for r in records),
        decode_per_token_ms=_median(r.decode_per_token_ms for r in records),
        total_ms=_median(r.total_ms for r in records),
        total_spread_ms=None,
        prefill_tflops=None if prefill_flops is None else prefill_flops / 1e12,
        flops_source=flops_source,
        kv_cache_mib=None if kv is None else kv / MIB,
        peak_memory_mib=None if peak is None else peak / MIB,
        joules_per_sample=energy,
    )


def _per_sample(total: float | None, record: ProfileRecord) -> float | None:
    """Token counts in records are request totals, summed over the batch's prompts."""
    return None if as_number(total) is None else total / record.batch_size


def _path_rank(path: str) -> int:
    return PATH_PREFERENCE.index(path) if path in PATH_PREFERENCE else len(PATH_PREFERENCE)


def select_efficiency(run: RunData, method: str, budget: int, like: Setup | None = None) -> Efficiency | None:
    """The latency numbers the main table uses for method@budget of one run (see the module docstring).

    `like`: prefer records measured like this (used to pick the full-budget record a speedup divides by).
    """
    matching = [r for r in run.profile if r.method == method and r.budget == budget]
    controlled = [r for r in matching if r.kind == "controlled"]
    if controlled:
        if like is not None:
            name = manifest_device(run.manifest)
            same = [r for r in controlled
                    if (record_device(r, name), r.path, r.dtype, str(r.batch_size)) == like.comparable()]
            if same:
                return _efficiency_from(same, run, "controlled")
        batch_one = [r for r in controlled if r.batch_size == 1] or controlled
        best_rank = min(_path_rank(r.path) for r in batch_one)
        chosen = [r for r in batch_one if _path_rank(r.path) == best_rank]
        return _efficiency_from(chosen, run, "controlled")
    requests = [r for r in matching if r.kind == "request"]
    if requests:
        return _efficiency_from(requests, run, "request")
    return None


def stage_efficiencies(run: RunData) -> list[Efficiency]:
    """Every distinct measurement setup of a run, for the latency-by-stage table: each controlled (method, budget,
    path, batch size, device, dtype) — the last written — and the request medians per (method, budget, batch size)."""
    out: list[Efficiency] = []
    groups: dict[tuple, list[ProfileRecord]] = {}
    for record in run.profile:
        if record.kind not in MEASURED_KINDS:
            continue
        if record.kind == "controlled":
            key = ("controlled", record.method, record.budget, record.path, record.batch_size, record.device, record.dtype)
        else:
            key = ("request", record.method, record.budget, None, record.batch_size, None, None)
        groups.setdefault(key, []).append(record)
    for key, records in groups.items():
        out.append(_efficiency_from(records, run, key[0]))
    return out


# ---------------------------------------------------------------------------------------------------------------
# full budget
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FullBudget:
    method: str
    budget: int
    note: str | None  # set when the run has no `none` method and the largest budget stands in


def full_budget(keys: Iterable[tuple[str, int]], run_id: str, what: str) -> FullBudget | None:
    """The full-budget (method, budget) among a run's cells or profile records."""
    keys = sorted(set(keys))
    if not keys:
        return None
    none_budgets = [b for m, b in keys if m == FULL_METHOD]
    if none_budgets:
        return FullBudget(FULL_METHOD, max(none_budgets), None)
    top = max(b for _, b in keys)
    method = min(m for m, b in keys if b == top)
    return FullBudget(method, top, f"run {run_id} has no `{FULL_METHOD}` {what}; its full budget is taken as {method}@{top}")


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
    n_scored: int = 0
    efficiency: Efficiency | None = None
    speedup: float | None = None
    setup: Setup = field(default_factory=Setup)
    full_budget: bool = False
    accuracy_run: str | None = None  # the run the scores come from
    efficiency_run: str | None = None  # the run the latency numbers come from

    @property
    def label(self) -> str:
        base = f"{self.method}@{self.budget}"
        return f"{base} [{self.run_ids[0]}]" if self.label_run else base

    @property
    def visual_tokens(self) -> int:
        """Visual tokens one image gives the LLM: the budget (a video prompt has one budget per frame)."""
        return self.budget


def _cell_status(cell: CellResult) -> tuple[str, str | None]:
    if cell.status == STATUS_OK:
        return "ok", None
    if cell.status == STATUS_OOM:
        return "oom", None
    if cell.status.startswith(FAILED_PREFIX):
        return "failed", cell.status[len(FAILED_PREFIX):]
    return "failed", cell.status


@dataclass
class Accuracy:
    """One run's scores for one method@budget."""

    run_id: str
    scores: dict[str, Score]
    full_budget: bool


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
    full = full_budget(((m, b) for _, m, b in cells), run.run_id, "cells")
    if full is not None and full.note:
        notes.append(full.note)
    if full is None:
        return {}
    headlines = _task_headlines(cells, full)
    reference: dict[str, float] = {}
    for (task, method, budget), cell in cells.items():
        if (method, budget) != (full.method, full.budget) or not cell.ok or task not in headlines:
            continue
        value = headline_value(headlines[task], cell.metrics)
        if value is not None and value != 0:
            reference[task] = value
    for task in sorted({t for t, _, _ in cells} - set(reference)):
        notes.append(f"run {run.run_id}: no usable full-budget ({full.method}@{full.budget}) score for {task}: retention n/a")
    parts: dict[tuple[str, int], Accuracy] = {}
    for (task, method, budget), cell in cells.items():
        part = parts.setdefault((method, budget), Accuracy(run.run_id, {}, (method, budget) == (full.method, full.budget)))
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
            part.scores[task] = Score("n/a", headline=headline,
                                      reason=f"headline metric {headline.metric} is NaN or missing in this cell")
            continue
        retention = 100.0 * value / reference[task] if task in reference else None
        part.scores[task] = Score("ok", value, headline, retention)
    return parts


def _efficiency_parts(run: RunData, notes: list[str]) -> dict[tuple[str, int], tuple[Efficiency, float | None, bool]]:
    others = sorted({r.kind for r in run.profile if r.kind not in MEASURED_KINDS})
    if others:
        count = sum(r.kind not in MEASURED_KINDS for r in run.profile)
        notes.append(f"run {run.run_id}: {count} profile record(s) of kind {', '.join(others)} left out "
                     "(no measured times; `vistog-bench profile --analytic` prints them)")
    keys = {(r.method, r.budget) for r in run.profile if r.kind in MEASURED_KINDS}
    full = full_budget(keys, run.run_id, "profile records")
    if full is None:
        return {}
    if full.note:
        notes.append(full.note)
    parts = {}
    for method, budget in sorted(keys):
        eff = select_efficiency(run, method, budget)
        if eff is None:
            continue
        base = select_efficiency(run, full.method, full.budget, like=eff.setup)
        speedup = None
        if base is not None and base.total_ms and eff.total_ms:
            speedup = base.total_ms / eff.total_ms
            if base.setup.comparable() != eff.setup.comparable():
                notes.append(f"run {run.run_id}: speedup of {method}@{budget} divides {base.setup.label()} "
                             f"by {eff.setup.label()} (no full-budget record measured the same way)")
        parts[(method, budget)] = (eff, speedup, (method, budget) == (full.method, full.budget))
    return parts


def method_order(method: str) -> tuple[int, str]:
    """`none` first, then baselines alphabetically, `vistog` (ours) last, as papers order their tables."""
    return (0 if method == FULL_METHOD else 2 if method == "vistog" else 1, method)


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
    keys = sorted({k for parts in list(accuracy.values()) + list(efficiency.values()) for k in parts},
                  key=lambda k: (-k[1], method_order(k[0])))
    rows: list[Row] = []
    for key in keys:
        acc_runs = [rid for rid in accuracy if key in accuracy[rid]]
        eff_runs = [rid for rid in efficiency if key in efficiency[rid]]
        if len(acc_runs) <= 1 and len(eff_runs) <= 1:
            groups = [(tuple(dict.fromkeys(acc_runs + eff_runs)), acc_runs[:1], eff_runs[:1], False)]
        else:  # several runs measured the same method@budget: one row per run, never averaged together
            groups = [((rid,), [rid] if rid in acc_runs else [], [rid] if rid in eff_runs else [], True)
                      for rid in dict.fromkeys(acc_runs + eff_runs)]
        for run_ids, acc_ids, eff_ids, label_run in groups:
            row = Row(key[0], key[1], run_ids, label_run)
            if acc_ids:
                part = accuracy[acc_ids[0]][key]
                row.scores = part.scores
                row.full_budget = part.full_budget
                retentions = [s.retention for s in part.scores.values() if s.retention is not None]
                row.n_scored = len(part.scores)
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
