"""The one derivation of full budget, retention, speedup and which profile records count.

`vistog_bench.report` (tables, figures) and `vistog_bench.regress` (`check`, `baseline update`) both call these
functions, so a number in a report and the value `check` holds a run to are the same number.

Full budget: the 100 % that retention and speedup divide by, chosen once per run and per kind of evidence (the
cells of `metrics.json` for scores, the measured profile records for times) by `full_budget`:
    the `none` method (stock LLaVA: every image patch is a visual token, so its budget is the patch count) at its
    largest budget; a run without `none` takes its largest budget (the first method by name on a tie) as a stand-in,
    and its readers say so. A cell is never its own reference: tome@64 in a run of pool@144, pool@36 and tome@64 is
    divided by pool@144.
Retention of a score = score / the full-budget cell's score of the same task and metric, in the same run; n/a
(None) when that cell failed or its score is not a finite, nonzero number.
Speedup = the full-budget measurement's median total_ms / this measurement's median total_ms, both measured the
same way (see `Measurement`) in the same run.

Profile records that count for method@budget (`measurements`): its `kind="controlled"` records when it has any,
one `Measurement` per (execution path, batch size, output length); else its `kind="request"` records as one
`Measurement`. Other kinds (`analytic`: FLOPs and roofline floors, no times) never count. With a task given,
controlled records without a task count for every task and request records are that task's (else those that name no
task); without one, a method@budget's requests are pooled over tasks (the report's rows span tasks).

Uncertainty of a speedup: a 95 % percentile-bootstrap interval over the requests (or repeats) behind both medians,
resampled independently and seeded, so a report is reproducible (Efron & Tibshirani, "An Introduction to the
Bootstrap", 1993, ch. 13). A speedup is flagged when either measurement's coefficient of variation exceeds
`CV_THRESHOLD` or its interval includes 1.0.

Headline score of a task (`headline_score`: the report's columns, the score `baseline update` requires): the metric
papers print for that benchmark, in their unit, by the first rule of `HEADLINE_RULES` whose task pattern matches (MME:
perception + cognition; unknown tasks: their first numeric metric, as is); the table is in docs/reports.md. lmms-eval's
`"<metric>,<filter>"` keys, `_stderr` keys and bare names are all read. The metric is chosen by *name*, never by value:
a NaN or missing headline is n/a for that cell, not replaced by another metric that happens to be finite.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import CellResult, ProfileRecord

FULL_BUDGET_METHOD = "none"
KIND_CONTROLLED = "controlled"
KIND_REQUEST = "request"
MEASURED_KINDS = (KIND_CONTROLLED, KIND_REQUEST)
PATH_PREFERENCE = ("compiled", "eager")  # the report's headline measurement: a compiled one before an eager one

# Above a 10 % CV the spread is larger than many of the budget-to-budget differences a report is read for; measured
# here, controlled CPU runs with one thread show 0.6-1.6 %, two threads on a shared 2-core machine far more.
CV_THRESHOLD = 0.10
CONFIDENCE = 0.95
# Efron & Tibshirani (1993) ch. 13 use B = 1000 and more for percentile intervals: 2000 keeps the 2.5 % tail at 50
# resamples.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def finite(value: Any) -> float | None:
    """A finite float, or None for None, NaN, infinities, bools, text and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def median(values: Iterable[Any]) -> float | None:
    """The median of the finite numbers among `values`, None when there are none."""
    numbers = [n for n in map(finite, values) if n is not None]
    return float(statistics.median(numbers)) if numbers else None


# ---------------------------------------------------------------------------------------------------------------
# full budget, retention
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FullBudget:
    """The (method, budget) a run's retention or speedup divides by; `stand_in` when the run has no `none`."""

    method: str
    budget: int
    stand_in: bool

    def note(self, run_id: str, what: str) -> str | None:
        """What a reader should be told about the choice (None when it is `none`)."""
        if not self.stand_in:
            return None
        return (
            f"run {run_id} has no `{FULL_BUDGET_METHOD}` {what}; its full budget is taken as "
            f"{self.method}@{self.budget}"
        )


def hardware_label(hardware: Mapping[str, Any] | None) -> str:
    """One hardware record in words: `cpu Intel Xeon, 1 thread(s)` or `cuda NVIDIA H100 (driver 550.54)`."""
    if not hardware:
        return "unrecorded"
    if hardware.get("gpu"):
        return f"{hardware.get('device')} {hardware['gpu']} (driver {hardware.get('driver')})"
    return f"{hardware.get('device')} {hardware.get('cpu')}, {hardware.get('threads')} thread(s)"


def hardware_groups(cells: Iterable[CellResult]) -> dict[str, list[CellResult]]:
    """A run's cells by hardware record (`hardware_label`), failed cells without one left out: more than one group
    means timings (and the ratios built on them) compare only inside a group."""
    groups: dict[str, list[CellResult]] = {}
    for cell in cells:
        if cell.hardware or cell.ok:
            groups.setdefault(hardware_label(cell.hardware), []).append(cell)
    return groups


def same_hardware(cells: Iterable[CellResult], a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether every cell of method@budget `a` and `b` ran on one hardware record (ratios between them are only
    computed when they did; a run of one process always did)."""
    records = {hardware_label(c.hardware) for c in cells if (c.method, c.budget) in (a, b) and (c.hardware or c.ok)}
    return len(records) <= 1


def full_budget(keys: Iterable[tuple[str, int]]) -> FullBudget | None:
    """The full budget among a run's (method, budget) keys (the rule in the module docstring); None for no keys."""
    keys = set(keys)
    if not keys:
        return None
    stock = [budget for method, budget in keys if method == FULL_BUDGET_METHOD]
    if stock:
        return FullBudget(FULL_BUDGET_METHOD, max(stock), stand_in=False)
    top = max(budget for _, budget in keys)
    return FullBudget(min(method for method, budget in keys if budget == top), top, stand_in=True)


def retention(score: Any, full_score: Any) -> float | None:
    """score / full-budget score as a fraction; None unless both are finite and the full-budget score is nonzero."""
    score, full_score = finite(score), finite(full_score)
    if score is None or not full_score:
        return None
    return score / full_score


# ---------------------------------------------------------------------------------------------------------------
# which profile records count
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Profile records of one method@budget measured the same way: `kind="controlled"` records of one execution path,
    batch size and output length (each already a median over its repeats), or all its `kind="request"` records."""

    kind: str
    execution_path: str | None  # None for requests (each record names its own)
    batch_size: int | None  # None for requests
    output_tokens: float | None  # per sample; None for requests or where not recorded
    records: tuple[ProfileRecord, ...]

    @property
    def label(self) -> str:
        """The group name in `check`'s value keys: `controlled,eager,bs1[,out32]` or `request`."""
        if self.kind == KIND_REQUEST:
            return KIND_REQUEST
        out = "" if self.output_tokens is None else f",out{self.output_tokens:g}"
        return f"{self.kind},{self.execution_path},bs{self.batch_size}{out}"

    @property
    def total_ms(self) -> float | None:
        return median(r.total_ms for r in self.records)

    @property
    def timings_ms(self) -> tuple[float, ...]:
        """The end-to-end times a bootstrap can resample: one per request. Controlled records keep summaries of their
        repeats (median, p10, p90, cv, n), not the repeats, so they give none."""
        if self.kind != KIND_REQUEST:
            return ()
        return tuple(n for n in (finite(r.total_ms) for r in self.records) if n is not None)

    @property
    def n_timings(self) -> int:
        """How many timings the median rests on: requests, or a controlled record's repeats (summed over records)."""
        if self.kind == KIND_REQUEST:
            return len(self.timings_ms)
        return int(sum(finite(_total_stats(r).get("n")) or 1 for r in self.records))

    @property
    def cv(self) -> float | None:
        """Coefficient of variation of total_ms: over the requests of each task (tasks are different workloads, so
        their mix is no noise) or each controlled record's own over its repeats; the largest of these."""
        if self.kind != KIND_REQUEST:
            values = [finite(_total_stats(r).get("cv")) for r in self.records]
            return max((v for v in values if v is not None), default=None)
        per_task: dict[str | None, list[float]] = {}
        for record in self.records:
            if finite(record.total_ms) is not None:
                per_task.setdefault(record.task, []).append(float(record.total_ms))
        values = [_cv(timings) for timings in per_task.values()]
        return max((v for v in values if v is not None), default=None)


def _cv(values: Sequence[float]) -> float | None:
    """Sample standard deviation / mean; None with fewer than two values or a zero mean."""
    mean = statistics.fmean(values) if len(values) > 1 else 0.0
    return statistics.stdev(values) / mean if mean else None


def _total_stats(record: ProfileRecord) -> dict[str, Any]:
    total = record.stats.get("total")
    return total if isinstance(total, dict) else {}


def _output_per_sample(record: ProfileRecord) -> float | None:
    """Records count output tokens over the batch; a forced output length is per sample."""
    tokens = finite(record.output_tokens)
    return None if tokens is None else tokens / record.batch_size


def measurements(
    profile: Iterable[ProfileRecord], method: str, budget: int, task: str | None = None
) -> list[Measurement]:
    """The measurements of method@budget (and of `task`, when given) that count, as the module docstring says."""
    mine = [r for r in profile if r.method == method and r.budget == budget]
    controlled = [r for r in mine if r.kind == KIND_CONTROLLED and (task is None or r.task in (None, task))]
    if controlled:
        groups: dict[tuple, list[ProfileRecord]] = {}
        for record in controlled:
            key = (record.execution_path, record.batch_size, _output_per_sample(record))
            groups.setdefault(key, []).append(record)
        return [
            Measurement(KIND_CONTROLLED, path, batch, out, tuple(records))
            for (path, batch, out), records in groups.items()
        ]
    requests = [r for r in mine if r.kind == KIND_REQUEST]
    if task is not None:
        requests = [r for r in requests if r.task == task] or [r for r in requests if r.task is None]
    return [Measurement(KIND_REQUEST, None, None, None, tuple(requests))] if requests else []


def _path_rank(path: str | None) -> int:
    return PATH_PREFERENCE.index(path) if path in PATH_PREFERENCE else len(PATH_PREFERENCE)


def headline_measurement(options: Sequence[Measurement]) -> Measurement | None:
    """The one measurement a method@budget is summarised by: the smallest batch size (1 where measured), a compiled
    path before an eager one, the longest forced output."""
    return min(
        options, key=lambda m: (m.batch_size or 0, _path_rank(m.execution_path), -(m.output_tokens or 0)), default=None
    )


def reference_measurement(full: Sequence[Measurement], this: Measurement) -> tuple[Measurement | None, bool]:
    """The full-budget measurement `this` is divided by, and whether it was measured the same way (same label);
    when none was, the full budget's headline measurement stands in (`check` compares only the same way)."""
    same = next((m for m in full if m.label == this.label), None)
    return (same, True) if same is not None else (headline_measurement(full), False)


# ---------------------------------------------------------------------------------------------------------------
# speedup and its interval
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speedup:
    """full-budget median total_ms / this median total_ms, with a 95 % bootstrap interval where timings allow."""

    value: float
    low: float | None  # None: fewer than two timings on a side, or controlled records (no repeats kept)
    high: float | None
    n_full: int  # timings behind each median
    n_this: int
    cv: float | None  # the larger of the two measurements' coefficients of variation

    @property
    def noisy(self) -> bool:
        return self.cv is not None and self.cv > CV_THRESHOLD

    @property
    def includes_one(self) -> bool:
        return self.low is not None and self.high is not None and self.low <= 1.0 <= self.high

    @property
    def flagged(self) -> bool:
        return self.noisy or self.includes_one

    def flag_reasons(self) -> list[str]:
        reasons = []
        if self.noisy:
            reasons.append(f"CV {self.cv:.0%} above {CV_THRESHOLD:.0%}")
        if self.includes_one:
            reasons.append(f"its {CONFIDENCE:.0%} interval {self.low:.2f}–{self.high:.2f} includes 1.0")
        return reasons


def speedup(full: Measurement, this: Measurement) -> Speedup | None:
    """The speedup of `this` over the full-budget measurement `full` (None without both medians)."""
    full_ms, this_ms = full.total_ms, this.total_ms
    if not full_ms or not this_ms:
        return None
    if full == this:  # the full budget itself: 1 by definition, no interval to draw
        return Speedup(1.0, None, None, full.n_timings, this.n_timings, None)
    low, high = bootstrap_ratio_interval(full.timings_ms, this.timings_ms)
    cvs = [cv for cv in (full.cv, this.cv) if cv is not None]
    return Speedup(full_ms / this_ms, low, high, full.n_timings, this.n_timings, max(cvs, default=None))


def bootstrap_ratio_interval(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval of median(numerator) / median(denominator), the two samples resampled
    independently with replacement (Efron & Tibshirani 1993, ch. 13); (None, None) with fewer than two values on a
    side."""
    if len(numerator) < 2 or len(denominator) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    top = np.median(rng.choice(np.asarray(numerator, float), (resamples, len(numerator))), axis=1)
    bottom = np.median(rng.choice(np.asarray(denominator, float), (resamples, len(denominator))), axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(top / bottom, [tail, 100 - tail])
    return float(low), float(high)


# -- headline scores ---------------------------------------------------------------------------------------------------
MME_PERCEPTION = ("mme_perception_score", "mme_percetion_score")
MME_COGNITION = ("mme_cognition_score",)

# Metrics lmms-eval reports that are not scores (paths to submission files and the like).
NON_SCORE_METRICS = {"submission"}


@dataclass(frozen=True)
class Headline:
    """How one task's headline score is computed and printed."""

    metric: str  # the metric (or `perception+cognition`) the score comes from
    unit: str  # short unit for a column header
    scale: float  # printed value = lmms-eval value x scale
    decimals: int


@dataclass(frozen=True)
class _Rule:
    patterns: tuple[str, ...]
    metrics: tuple[str, ...]  # candidate metric names, first present wins; `*` allowed
    unit: str
    scale: float
    decimals: int = 1


HEADLINE_RULES: tuple[_Rule, ...] = (
    _Rule(("pope*",), ("pope_f1_score",), "F1 %", 100.0),
    _Rule(("*cap*", "nocaps*", "flickr*"), ("*CIDEr",), "CIDEr", 100.0),
    _Rule(
        ("gqa*", "vqav2*", "textvqa*", "ok_vqa*", "vizwiz*", "scienceqa*"),
        ("exact_match", "acc", "accuracy"),
        "%",
        100.0,
    ),
    _Rule(("mmbench*", "mmvet*"), ("gpt_eval_score",), "%", 1.0),
    _Rule(("seedbench*",), ("seed_image", "seed_all"), "%", 100.0),
)


def strip_filter(key: str) -> str:
    """`"exact_match,none"` -> `"exact_match"`; a bare name is returned as is."""
    return str(key).split(",", 1)[0]


def metric_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metric name (filter stripped) -> value, stderr entries left out. With several filters the `none` one wins."""
    out: dict[str, Any] = {}
    ordered = sorted(metrics.items(), key=lambda kv: 0 if str(kv[0]).endswith(",none") else 1)
    for key, value in ordered:
        name = strip_filter(key)
        if name.endswith("_stderr") or name == "alias":
            continue
        out.setdefault(name, value)
    return out


def _is_number(value: Any) -> bool:
    """A number, finite or not (NaN names a metric that has no value in this cell)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _match_metric(candidates: tuple[str, ...], values: Mapping[str, Any]) -> str | None:
    for candidate in candidates:
        for name, value in values.items():
            if fnmatch.fnmatchcase(name, candidate) and _is_number(value):
                return name
    return None


def _first_metric(values: Mapping[str, Any]) -> str | None:
    for name, value in values.items():
        if name not in NON_SCORE_METRICS and _is_number(value):
            return name
    return None


def headline_metric(task: str, metrics: Mapping[str, Any]) -> Headline | None:
    """Which metric of these is the task's headline (by name: its value may be NaN), or None when none is."""
    values = metric_values(metrics)
    task_l = task.lower()
    if fnmatch.fnmatchcase(task_l, "mme*") and any(k in values for k in MME_PERCEPTION + MME_COGNITION):
        return Headline("perception+cognition", "P+C", 1.0, 1)
    for rule in HEADLINE_RULES:
        if any(fnmatch.fnmatchcase(task_l, p) for p in rule.patterns):
            name = _match_metric(rule.metrics, values)
            if name is not None:
                return Headline(name, rule.unit, rule.scale, rule.decimals)
            break
    name = _first_metric(values)
    return None if name is None else Headline(name, name, 1.0, 3)


def headline_value(headline: Headline, metrics: Mapping[str, Any]) -> float | None:
    """The value of `headline` in these metrics, scaled to its printed unit; None when missing or not finite."""
    values = metric_values(metrics)
    if headline.metric == "perception+cognition":
        perception = next((finite(values[k]) for k in MME_PERCEPTION if k in values), None)
        cognition = next((finite(values[k]) for k in MME_COGNITION if k in values), None)
        return None if perception is None or cognition is None else perception + cognition
    value = finite(values.get(headline.metric))
    return None if value is None else value * headline.scale


def headline_score(task: str, metrics: Mapping[str, Any]) -> tuple[Headline, float] | None:
    """The headline score of one cell, already scaled to the printed unit, or None when the cell has no headline
    metric or its value is NaN / missing."""
    headline = headline_metric(task, metrics)
    if headline is None:
        return None
    value = headline_value(headline, metrics)
    return None if value is None else (headline, value)


__all__ = [
    "hardware_groups",
    "hardware_label",
    "same_hardware",
    "Headline",
    "headline_metric",
    "headline_score",
    "headline_value",
    "metric_values",
    "strip_filter",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "CV_THRESHOLD",
    "FULL_BUDGET_METHOD",
    "KIND_CONTROLLED",
    "KIND_REQUEST",
    "MEASURED_KINDS",
    "FullBudget",
    "Measurement",
    "Speedup",
    "bootstrap_ratio_interval",
    "finite",
    "full_budget",
    "headline_measurement",
    "measurements",
    "median",
    "reference_measurement",
    "retention",
    "speedup",
]
