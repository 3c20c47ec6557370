"""Which lmms-eval metric is a benchmark's headline score, and in which unit the papers print it.

lmms-eval names its results `"<metric>,<filter>"` (e.g. `"exact_match,none"`) and its standard errors
`"<metric>_stderr,<filter>"`; both forms, and bare metric names, are accepted here.

Headline score per task (the first rule whose task pattern matches wins; unknown tasks fall back to their first numeric
metric, printed as is):

    task pattern                       headline                                          printed as
    mme*                               mme_perception_score + mme_cognition_score         sum ("P+C", as papers do)
    pope*                              pope_f1_score                                       x100 (F1 %)
    *cap*, nocaps*, flickr*            the metric ending in CIDEr                          x100 (CIDEr, as papers do)
    gqa*, vqav2*, textvqa*, ok_vqa*,   exact_match (lmms-eval's VQA accuracy for the VQA   x100 (%)
    vizwiz*, scienceqa*                sets, plain exact match for GQA / ScienceQA)
    mmbench*, mmvet*                   gpt_eval_score (already a percentage)               as is (%)
    seedbench*                         seed_image, else seed_all                           x100 (%)

lmms-eval spelt the MME perception metric `mme_percetion_score` in some releases; both spellings are read.

The headline metric is chosen by *name*, never by value: a headline that is NaN (or missing from a cell) is n/a for
that cell, not replaced by another metric that happens to be finite (which would print, say, a colour sub-score
under the exact-match column and a retention above 100 %).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..analysis import finite

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


def benchmark_family(task: str, families: tuple[str, ...]) -> str | None:
    """The published-table column a task belongs to: `textvqa_val` -> `textvqa`, `pope_pop` -> `pope`."""
    task_l = task.lower()
    for family in sorted(families, key=len, reverse=True):
        fam = family.lower()
        if task_l == fam or task_l.startswith(fam + "_"):
            return family
    return None
