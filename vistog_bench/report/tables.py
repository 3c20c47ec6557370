"""Report tables as plain data (`Table`): the main method@budget table, the reported block, per-task details and the
latency-by-stage table. Rendering to Markdown / LaTeX / CSV / HTML lives in `render.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..analysis import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    CV_THRESHOLD,
    Measurement,
    hardware_groups,
    metric_values,
)
from ..results import STAGES, safe_file_stem
from .data import (
    Efficiency,
    ReportData,
    Row,
    RunData,
    Setup,
    manifest_setup,
    method_order,
    stage_efficiencies,
)
from .metrics import stderr_values
from .reference import ReferenceSet

AUTO = -1  # decimals: 4 decimals below 10, 2 above (raw lmms-eval metrics of unknown range)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    better: str | None = None  # "max" | "min" | None: which value is marked best
    decimals: int | None = 1  # None: a text column


@dataclass
class Cell:
    value: float | str | None = None
    text: str | None = None  # shown instead of the value: OOM, failed, n/a
    marks: tuple[str, ...] = ()  # footnote marks
    best: bool = False
    stderr: float | None = None


@dataclass
class Table:
    name: str  # file stem
    title: str
    columns: list[Column]
    rows: list[dict[str, Cell]]
    provenance: list[str]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (mark or "", text)
    block_starts: set[int] = field(default_factory=set)  # row indices preceded by a rule
    row_meta: list[dict[str, Any]] = field(default_factory=list)  # extra CSV columns per row (provenance)


class Footnotes:
    """Footnote marks a, b, c ... given out once per distinct text."""

    def __init__(self, style: str = "alpha"):
        self.style = style
        self.items: list[tuple[str, str]] = []

    def mark(self, text: str) -> str:
        for mark, existing in self.items:
            if existing == text:
                return mark
        n = len(self.items)
        mark = str(n + 1) if self.style == "numeric" else "abcdefghijklmnopqrstuvwxyz"[n % 26] * (n // 26 + 1)
        self.items.append((mark, text))
        return mark


def format_number(value: float, decimals: int) -> str:
    if decimals == AUTO:
        decimals = 4 if abs(value) < 10 else 2
    text = f"{value:.{decimals}f}"
    if value != 0 and float(text) == 0:  # tiny-model values would print as 0.00
        text = f"{value:.3g}"
    return text


def mark_best(table: Table) -> None:
    """Mark the best value of each column that has a direction, ties included, when at least two rows have one."""
    for column in table.columns:
        if column.better is None or column.decimals is None:
            continue
        cells = [
            row[column.key]
            for row in table.rows
            if column.key in row and row[column.key].text is None and isinstance(row[column.key].value, (int, float))
        ]
        if len(cells) < 2:
            continue
        shown = [float(format_number(c.value, column.decimals)) for c in cells]
        best = max(shown) if column.better == "max" else min(shown)
        for cell, value in zip(cells, shown, strict=True):
            cell.best = value == best


# ---------------------------------------------------------------------------------------------------------------
# provenance
# ---------------------------------------------------------------------------------------------------------------
def _describe(values: list[str | None], what: str) -> str:
    seen = sorted({v for v in values if v})
    if not seen:
        return f"{what} ?"
    if len(seen) == 1:
        return f"{what} {seen[0]}"
    return f"{what} MIXED ({', '.join(seen)}; see the setup column)"


def runs_line(runs: list[RunData]) -> str:
    parts = []
    for run in runs:
        sha = str(run.manifest.git_sha or "")[:10]
        parts.append(f"{run.run_id} ({run.path}{', git ' + sha if sha else ''})")
    return "Runs: " + "; ".join(parts) + "."


def setup_lines(setups: list[Setup]) -> str:
    return (
        "Setup: "
        + "; ".join(
            [
                _describe([s.device for s in setups], "device"),
                _describe([s.dtype for s in setups], "dtype"),
                _describe([s.path for s in setups], "path"),
                _describe([s.batch_size for s in setups], "batch size"),
                _describe([s.output_tokens for s in setups], "output tokens"),
            ]
        )
        + "."
    )


def is_mixed(setups: list[Setup]) -> bool:
    """True when two setups disagree on device, path, dtype or batch size (an unknown value disagrees with none)."""
    return any(len({s.comparable()[i] for s in setups} - {None}) > 1 for i in range(4))


# ---------------------------------------------------------------------------------------------------------------
# main table
# ---------------------------------------------------------------------------------------------------------------
EFFICIENCY_COLUMNS = (
    Column("tflops", "Prefill TFLOPs", "min", 2),
    Column("ttft_ms", "TTFT (ms)", "min", 1),
    Column("total_ms", "E2E (ms)", "min", 1),
    Column("speedup", "Speedup (×)", "max", 2),
    Column("speedup_ci", f"{CONFIDENCE:.0%} CI of speedup", None, None),
    Column("timings", "Timed (n)", None, None),
    Column("kv_mib", "KV cache (MiB)", "min", 1),
    Column("peak_mib", "Peak mem (MiB)", "min", 1),
    Column("joules", "J / sample", "min", 2),
)
# CellResult.budget_rule -> what a budget (the number after `@`) means (model.families' rules, VisToG's on them).
BUDGET_RULES = {
    "per_image_total": "visual tokens per image, summed over its tiles (base view, tiles, newline tokens); `none` at "
    "the most one image can give on the checkpoint",
    "percent_of_own": "percent of each image's own visual-token count; `none` at 100",
    "per_view": "VisToG's N tokens per view (an image gives views x N)",
}
# AppliedMethod.budget_convention -> how a budget counts, for the conventions other than the LLM input's.
BUDGET_CONVENTIONS = {
    "layer_mean": "the mean visual tokens per image over the LLM's layers (staged pruning inside the LLM, as "
    "PyramidDrop / SparseVLM / DART count it)",
    "after_layer": "the visual tokens per image after FastV's layer K (all of them before it)",
}
NO_INTERVAL = (
    "no interval: controlled records keep the median, p10, p90, CV and n of their repeats, not the repeats "
    "a bootstrap resamples"
)


def measured_ttft_everywhere(effs: list[Efficiency]) -> bool:
    """Use the profiler's measured TTFT only when every row has one, so a column never mixes two definitions."""
    return bool(effs) and all(e.measured_ttft_ms is not None for e in effs)


def ttft_definition(measured: bool) -> str:
    return (
        "TTFT = measured time to first token (request start -> first token's logits, preprocessing included)"
        if measured
        else "TTFT = vision + grouping + projector + prefill"
    )


def timings_text(measurement: Measurement) -> str:
    """How many timings a row's latency rests on: `5 requests`, `20 repeats`."""
    unit = "request" if measurement.kind == "request" else "repeat"
    return f"{measurement.n_timings} {unit}{'s' if measurement.n_timings != 1 else ''}"


def _speedup_cells(row: Row, notes: Footnotes) -> dict[str, Cell]:
    """The speedup, flagged when it is uncertain (analysis.Speedup.flagged), and its interval."""
    ratio = row.speedup
    if ratio is None:
        return {"speedup": Cell(), "speedup_ci": Cell()}
    marks = ()
    if ratio.flagged:
        marks = (
            notes.mark(
                f"speedup of {row.label} uncertain: {'; '.join(ratio.flag_reasons())} "
                f"(from {ratio.n_full} and {ratio.n_this} timings)"
            ),
        )
    if ratio.low is not None:
        interval = Cell(f"{ratio.low:.2f}–{ratio.high:.2f}")
    elif row.full_budget:
        interval = Cell()
    else:
        interval = Cell(text="n/a", marks=(notes.mark(NO_INTERVAL),)) if row.efficiency.kind == "controlled" else Cell()
    return {"speedup": Cell(ratio.value, marks=marks), "speedup_ci": interval}


def _efficiency_cells(row: Row, measured_ttft: bool, notes: Footnotes) -> dict[str, Cell]:
    eff = row.efficiency
    if eff is None:
        return {c.key: Cell() for c in EFFICIENCY_COLUMNS}
    values = {
        "tflops": eff.prefill_tflops,
        "ttft_ms": eff.ttft_ms(measured_ttft),
        "total_ms": eff.total_ms,
        "timings": timings_text(eff.measurement),
        "kv_mib": eff.kv_cache_mib,
        "peak_mib": eff.peak_memory_mib,
        "joules": eff.joules_per_sample,
    }
    return {**{k: Cell(v) for k, v in values.items()}, **_speedup_cells(row, notes)}


def _score_cell(row: Row, task: str, notes: Footnotes) -> Cell:
    score = row.scores.get(task)
    if score is None:
        return Cell()
    if score.status == "ok":
        return Cell(score.value)
    if score.status == "oom":
        return Cell(text="OOM")
    text = "n/a" if score.status == "n/a" else "failed"
    return Cell(text=text, marks=(notes.mark(f"{task} @ {row.label}: {score.reason}"),))


def _retention_cell(row: Row, tasks: list[str], notes: Footnotes) -> Cell:
    if not row.scores:
        return Cell()
    if row.avg_retention is None:
        return Cell(
            text="n/a", marks=(notes.mark("retention n/a: no full-budget score for these benchmarks in the same run"),)
        )
    scored = len([t for t in tasks if t in row.scores])
    if row.n_retention < scored:
        return Cell(
            row.avg_retention,
            marks=(
                notes.mark(
                    f"averaged over the {row.n_retention} of {scored} benchmarks that have both a score and a "
                    "full-budget score"
                ),
            ),
        )
    return Cell(row.avg_retention)


def _row_meta(row: Row) -> dict[str, Any]:
    """The CSV's per-row provenance columns (raw interval ends included)."""
    eff, ratio = row.efficiency, row.speedup
    return {
        "runs": " ".join(row.run_ids),
        "device": row.setup.device,
        "dtype": row.setup.dtype,
        "path": row.setup.path,
        "batch_size": row.setup.batch_size,
        "output_tokens": row.setup.output_tokens,
        "latency_source": eff.source if eff else None,
        "flops_source": eff.flops_source if eff else None,
        "timings_n": eff.measurement.n_timings if eff else None,
        "speedup_low": ratio.low if ratio else None,
        "speedup_high": ratio.high if ratio else None,
        "speedup_cv": ratio.cv if ratio else None,
    }


def _main_columns(data: ReportData) -> tuple[list[Column], dict[str, Any]]:
    """The main table's columns and each task's headline (its unit), as the first row that has one names it."""
    units = {}
    for task in data.tasks:
        heads = [r.scores[task].headline for r in data.rows if task in r.scores and r.scores[task].headline]
        units[task] = heads[0] if heads else None
    columns = [Column("method", "Method", None, None), Column("tokens", "Tokens", None, 0)]
    for task in data.tasks:
        head = units[task]
        columns.append(
            Column(f"task:{task}", f"{task} ({head.unit})" if head else task, "max", head.decimals if head else 1)
        )
    columns.append(Column("retention", "Avg. retention (%)", "max", 1))
    if any(r.tokens for r in data.rows):
        columns.insert(2, Column("unreduced", "Unreduced", None, 0))
    return columns + list(EFFICIENCY_COLUMNS), units


def budget_lines(rows: list[Row]) -> list[str]:
    """What the budgets mean: a family's budget rule and what the token columns hold, and which rows count their
    budget otherwise than as the tokens entering the LLM (AppliedMethod.budget_convention)."""
    lines = []
    rules = sorted({r.budget_rule for r in rows if r.budget_rule})
    if rules:
        told = "; ".join(f"{rule} = {BUDGET_RULES.get(rule, rule)}" for rule in rules)
        lines.append(
            f"Budgets (after @): {told}. Tokens = mean visual tokens per image the LLM received, Unreduced = "
            "the processor's count before reduction (means over the scored samples)."
        )
    for convention in ("layer_mean", "after_layer"):
        labels = [r.label for r in rows if r.budget_convention == convention]
        if labels:
            lines.append(f"{', '.join(labels)}: the budget is {BUDGET_CONVENTIONS[convention]}.")
    return lines


def attention_lines(rows: list[Row]) -> list[str]:
    """The attention kernels behind the rows' timings, when they differ (timings compare only under one record)."""
    records = {}
    for row in rows:
        if row.attention and row.efficiency:
            records.setdefault(row.attention, []).append(row.label)
    if len(records) < 2:
        return [f"Attention: {next(iter(records))}."] if records else []
    told = "; ".join(f"{', '.join(labels)}: {record}" for record, labels in records.items())
    return [f"Attention kernels differ between rows (compare timings only under one record): {told}."]


def hardware_lines(runs) -> list[str]:
    """Each run whose cells ran on more than one hardware record, its groups named: its speedups and retentions are
    computed only between cells of one record (`analysis.same_hardware`)."""
    lines = []
    for run in runs:
        groups = hardware_groups(run.cells)
        if len(groups) > 1:
            told = "; ".join(
                f"{label}: {', '.join(sorted({f'{c.method}@{c.budget}' for c in cells}))}"
                for label, cells in sorted(groups.items())
            )
            lines.append(
                f"Run {run.run_id} mixes hardware ({told}): speedup and retention are given only between cells of one "
                "record; the others are n/a."
            )
    return lines


def _drop_empty_efficiency(columns: list[Column], rows: list[dict[str, Cell]]) -> tuple[list[Column], list[Column]]:
    """Efficiency columns no row has a value for are left out: (columns kept, columns dropped)."""
    empty = [c for c in EFFICIENCY_COLUMNS if all(r[c.key].value is None and r[c.key].text is None for r in rows)]
    for r in rows:
        for c in empty:
            r.pop(c.key, None)
    return [c for c in columns if c not in empty], empty


def _main_provenance(
    data: ReportData, units: dict[str, Any], measured_ttft: bool, empty: list[Column], mixed: bool
) -> list[str]:
    effs = [r.efficiency for r in data.rows if r.efficiency]
    kinds = {e.kind for e in effs}
    flops_sources = {e.flops_source for e in effs if e.flops_source}
    lines = [
        runs_line(data.runs),
        setup_lines([r.setup for r in data.rows]),
        *budget_lines(data.rows),
        *attention_lines(data.rows),
        *hardware_lines(data.runs),
    ]
    if kinds:
        described = {
            "controlled": "controlled measurements (`kind=controlled`: batch size 1 and the compiled path "
            "preferred where several exist, forced output length)",
            "request": "medians over served requests (`kind=request`)",
        }
        lines.append(
            "Latency from "
            + " and ".join(described[k] for k in sorted(kinds))
            + ("; the latency_source column of the CSV says which per row" if len(kinds) > 1 else "")
            + f". {ttft_definition(measured_ttft)}; speedup = full-budget E2E / this E2E, same run. "
            "Prefill TFLOPs: "
            + (" / ".join(sorted(flops_sources)) or "none recorded")
            + (" (see the flops_source column of the CSV)" if len(flops_sources) > 1 else "")
            + "."
        )
        lines.append(
            f"Speedup interval: {CONFIDENCE:.0%} percentile bootstrap over the timings behind both medians "
            f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; Efron & Tibshirani 1993, ch. 13); a speedup "
            f"whose CV exceeds {CV_THRESHOLD:.0%} or whose interval includes 1.0 is marked. Timed (n): the requests "
            "or repeats the row's latency rests on."
        )
    if empty:
        lines.append("No profile data for: " + ", ".join(c.header for c in empty) + " (columns left out).")
    lines.append(
        "Scores: "
        + "; ".join(
            f"{t} = {units[t].metric}{' x100' if units[t] and units[t].scale == 100 else ''}"
            for t in data.tasks
            if units[t]
        )
        + ". Retention = score / the same run's full-budget score, averaged over benchmarks. Best per column in bold."
        if data.tasks
        else "Scores: no metrics.json cells."
    )
    if mixed:
        lines.append(
            "Rows come from different devices, paths, dtypes or batch sizes: compare latency "
            "only within rows of the same setup."
        )
    return lines


def main_table(data: ReportData) -> Table:
    """One row per method@budget: scores, average retention, latency, speedup (with its interval), memory, energy."""
    notes = Footnotes()
    columns, units = _main_columns(data)
    mixed = is_mixed([r.setup for r in data.rows])
    measured_ttft = measured_ttft_everywhere([r.efficiency for r in data.rows if r.efficiency])
    rows: list[dict[str, Cell]] = []
    block_starts = {i for i in range(1, len(data.rows)) if data.rows[i].budget != data.rows[i - 1].budget}
    for row in data.rows:
        cells = {"method": Cell(row.label + (" (full)" if row.full_budget else "")), "tokens": Cell(row.visual_tokens)}
        if row.tokens:
            cells["unreduced"] = Cell(row.tokens[1])
        cells.update({f"task:{task}": _score_cell(row, task, notes) for task in data.tasks})
        cells["retention"] = _retention_cell(row, data.tasks, notes)
        cells.update(_efficiency_cells(row, measured_ttft, notes))
        if mixed:
            cells["setup"] = Cell(row.setup.label())
        rows.append(cells)
    columns, empty = _drop_empty_efficiency(columns, rows)
    if mixed:
        columns.append(Column("setup", "Setup", None, None))
    table = Table(
        "main",
        "Accuracy and efficiency per method @ visual-token budget",
        columns,
        rows,
        _main_provenance(data, units, measured_ttft, empty, mixed),
        [],
        block_starts,
        [_row_meta(r) for r in data.rows],
    )
    mark_best(table)
    table.notes = notes.items + [("", n) for n in data.notes]
    return table


# ---------------------------------------------------------------------------------------------------------------
# reported block
# ---------------------------------------------------------------------------------------------------------------
def reference_table(reference: ReferenceSet) -> Table:
    notes = Footnotes(style="numeric")
    columns = [
        Column("method", "Method (reported)", None, None),
        Column("tokens", "Tokens", None, 0),
        Column("convention", "Counted as", None, None),
    ]
    columns += [Column(f"bench:{b}", b, None, 0 if b == "mme" else 1) for b in reference.benchmarks]
    columns.append(Column("retention", "Avg. retention (%)", None, 1))
    rows, meta, blocks = [], [], set()
    ordered = sorted(reference.rows, key=lambda r: (r.budget[0] != "tokens", -r.budget[1]))  # token counts first
    for index, ref in enumerate(ordered):
        if index > 0 and ref.budget != ordered[index - 1].budget:
            blocks.add(index)
        marks = [notes.mark(ref.source)]
        if ref.note:
            marks.append(notes.mark(ref.note))
        tokens = Cell(ref.visual_tokens) if ref.visual_tokens is not None else Cell(text=ref.budget_label)
        cells = {
            "method": Cell(ref.method, marks=tuple(marks)),
            "tokens": tokens,
            "convention": Cell(text=ref.convention or "not stated"),
        }
        for b in reference.benchmarks:
            cells[f"bench:{b}"] = Cell(ref.scores.get(b))
        cells["retention"] = Cell(ref.retention) if ref.retention is not None else Cell(text="n/a")
        rows.append(cells)
        meta.append({"source": ref.source, "note": ref.note, "file": str(ref.file)})
    provenance = [
        "Reported in papers, not measured here; never averaged with measured rows. "
        "Files: " + ", ".join(str(f) for f in reference.files) + ".",
        (
            "mme = perception + cognition, mme_perception alone; other benchmarks in %. Tokens: per image, or the "
            "percent of visual tokens kept (video tables). Counted as: llm_input = every LLM layer sees the budget, "
            "layer_mean = its mean over LLM layers, after_layer = kept after an early LLM layer (the method's own "
            "convention; a re-quoting table may not say how it ran it). Retention = mean of value / the same source's "
            "full-budget value (n/a where that source gives no full-budget row)."
        ),
    ]
    return Table(
        "reported", "Reported numbers (published, for context)", columns, rows, provenance, notes.items, blocks, meta
    )


# ---------------------------------------------------------------------------------------------------------------
# per-task details
# ---------------------------------------------------------------------------------------------------------------
def task_tables(data: ReportData) -> list[Table]:
    tables = []
    several_runs = len(data.runs) > 1
    for task in data.tasks:
        cells = [(run, c) for run in data.runs for c in run.cells if c.task == task]
        cells.sort(key=lambda rc: (-rc[1].budget, method_order(rc[1].method), rc[0].run_id))
        metric_names: list[str] = []
        for _, cell in cells:
            for name in metric_values(cell.metrics):
                if name not in metric_names:
                    metric_names.append(name)
        columns = [
            Column("method", "Method", None, None),
            Column("status", "Status", None, None),
            Column("n", "n", None, 0),
        ]
        columns += [Column(f"metric:{m}", m, None, AUTO) for m in metric_names]
        rows, meta, blocks = [], [], set()
        for index, (run, cell) in enumerate(cells):
            if index > 0 and cell.budget != cells[index - 1][1].budget:
                blocks.add(index)
            values = metric_values(cell.metrics)
            errors = stderr_values(cell.stderr, cell.metrics)
            label = f"{cell.method}@{cell.budget}" + (f" [{run.run_id}]" if several_runs else "")
            row = {"method": Cell(label), "status": Cell(cell.status), "n": Cell(cell.n_samples)}
            for m in metric_names:
                value = values.get(m)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    row[f"metric:{m}"] = Cell(float(value), stderr=errors.get(m))
                else:
                    row[f"metric:{m}"] = Cell(None if value is None else str(value))
            rows.append(row)
            meta.append({"run": run.run_id})
        runs = [r for r in data.runs if any(c.task == task for c in r.cells)]
        provenance = [
            runs_line(runs),
            setup_lines([manifest_setup(r.manifest) for r in runs]),
            "Every metric lmms-eval returned, as it returned it (filter suffix dropped), ± its stderr.",
        ]
        name = f"task_{safe_file_stem(task)}"  # the file name of its table: a task name can hold `/` or `../`
        tables.append(Table(name, f"{task}: all metrics", columns, rows, provenance, [], blocks, meta))
    return tables


# ---------------------------------------------------------------------------------------------------------------
# latency by stage
# ---------------------------------------------------------------------------------------------------------------
def stage_rows(data: ReportData) -> list[Efficiency]:
    effs = [e for run in data.runs for e in stage_efficiencies(run)]
    effs.sort(
        key=lambda e: (
            e.run_id,
            -e.budget,
            method_order(e.method),
            e.kind,
            e.setup.path or "",
            e.measurement.batch_size or 0,
            e.measurement.output_tokens or 0,
        )
    )
    return effs


def stage_table(data: ReportData) -> Table:
    several_runs = len(data.runs) > 1
    columns = [
        Column("method", "Method", None, None),
        Column("source", "Source", None, None),
        Column("setup", "Setup", None, None),
        Column("tokens", "Tokens", None, 0),
    ]
    columns += [Column(f"stage:{s}", f"{s} (ms)", None, 2) for s in STAGES]
    columns += [
        Column("per_token", "decode / token (ms)", None, 2),
        Column("stage_ttft", "vision+grouping+projector+prefill (ms)", None, 2),
        Column("ttft", "TTFT measured (ms)", None, 2),
        Column("total", "total (ms)", None, 2),
        Column("spread", "total p10–p90 (ms)", None, None),
        Column("timings", "Timed (n)", None, None),
    ]
    rows, meta, blocks = [], [], set()
    effs = stage_rows(data)
    for index, eff in enumerate(effs):
        if index > 0 and (eff.run_id, eff.budget) != (effs[index - 1].run_id, effs[index - 1].budget):
            blocks.add(index)
        label = f"{eff.method}@{eff.budget}" + (f" [{eff.run_id}]" if several_runs else "")
        row = {
            "method": Cell(label),
            "source": Cell(eff.source),
            "setup": Cell(eff.setup.label()),
            "tokens": Cell(eff.budget),
        }
        for s in STAGES:
            row[f"stage:{s}"] = Cell(eff.stage_ms.get(s))
        row["per_token"] = Cell(eff.decode_per_token_ms)
        row["stage_ttft"] = Cell(eff.stage_sum_ttft_ms)
        row["ttft"] = Cell(eff.measured_ttft_ms)
        row["total"] = Cell(eff.total_ms)
        spread = eff.total_spread_ms
        row["spread"] = Cell(f"{spread[0]:.2f}–{spread[1]:.2f}" if spread else None)
        row["timings"] = Cell(timings_text(eff.measurement))
        rows.append(row)
        meta.append({"run": eff.run_id, "kind": eff.kind, "n_records": eff.n_records})
    provenance = [
        runs_line([r for r in data.runs if r.profile])
        if any(r.profile for r in data.runs)
        else "Runs: none with profile records.",
        setup_lines([e.setup for e in effs]),
        (
            "Controlled rows: medians over repeats of one `vistog-bench profile` measurement per execution path, "
            "batch size and output length; request rows: medians over a method@budget's served requests. "
            "TTFT measured = request start -> first token's logits, as the profiler records it."
        ),
    ]
    return Table("stages", "Latency by stage", columns, rows, provenance, [], blocks, meta)
