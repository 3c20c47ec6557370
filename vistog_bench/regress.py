"""`vistog-bench check`: compare a run with a committed baseline, cell by cell, and exit 1 on a regression.

A run is reduced to *values*: for each cell (task, method, budget) a flat map `"<category>/<name>" -> float`.
The baseline file stores the values of the run it was made from (see `regress_baseline.py`), so a check is the same
derivation on the new run followed by a key-by-key comparison under named tolerances.

Categories (what each value is, where it comes from, which direction is better):

    accuracy/<metric,filter>   CellResult.metrics as lmms-eval writes them                         higher (default)
    retention/<metric,filter>  score / the same run's full-budget score for that task and metric   higher
    speedup/total_ms[<group>]  full-budget total_ms / this cell's total_ms, both from this run     higher
    flops/<stage>[<group>]     analytic FLOPs from ProfileRecord.flops (+ `total` if absent)      equal (exact)
    memory/<field>[<group>]    peak_memory_bytes per key and kv_cache_bytes, max over records      lower
    latency/total_ms[<group>]  absolute median total_ms; off by default (only pinned GPU runners)   lower
    samples/n_samples          CellResult.n_samples: a different sample set makes accuracy moot     equal

Full budget: method `none` at its largest budget for that task when the run has it, else the cell's own method at
its largest budget. Profile records of a cell: the `kind="controlled"` records for its (method, budget) when any
exist, one group per (path, batch size), each summarised by medians; else its `kind="request"` records (group
`request`), total_ms by median, FLOPs by mean per record.

Every value in the baseline must be found in the run: a missing cell or value is a failure (exit 1), never a
silent pass. A value only in the run is listed as `new`. A baseline cell that was not `ok` and now is `ok` is
`fixed` (not a failure): its baseline values described a failure, so they are not compared and the run's values are
listed as `new`. Exit 2 is for unreadable input (UsageError), a baseline with no cells (nothing to hold the run to),
and an unwritable --junit / --summary (checked before the comparison; the files are written before the verdict is
printed, so a printed verdict is always the exit code's). Exit 3: the disk filled up while writing them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping
from xml.etree import ElementTree

from .errors import UsageError
from .results import (
    STATUS_OK,
    CellKey,
    CellResult,
    ProfileRecord,
    RunDir,
    check_writable_file,
    load_run,
    read_json,
    write_output_text,
)

BASELINE_FORMAT = "vistog-bench-baseline/1"
DEFAULT_TOLERANCES = "regress_tolerances.json"
FULL_BUDGET_METHOD = "none"

CATEGORIES = ("accuracy", "retention", "speedup", "flops", "memory", "latency", "samples")
MODES = ("abs", "rel")
BETTER = ("higher", "lower", "equal")

PASS, IMPROVED, FIXED, FAIL, MISSING, NEW = "pass", "improved", "fixed", "FAIL", "missing", "new"
FAILING = (FAIL, MISSING)

# Floats written to JSON and read back, or summed in another order, differ in the last bits: never a regression.
_ROUNDING = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How far a value may move before it is a regression.

    `mode="abs"`: `allowed` is in the value's own units (points of the metric); `mode="rel"`: a fraction of the
    baseline value. `better` says which direction is good; `equal` fails on a move either way.
    """

    mode: str
    allowed: float
    better: str
    enabled: bool = True
    why: str = ""

    def slack(self, baseline: float) -> float:
        return self.allowed if self.mode == "abs" else self.allowed * abs(baseline)

    def describe(self) -> str:
        if self.allowed == 0:
            return "exact"
        amount = f"{self.allowed:g}" if self.mode == "abs" else f"{self.allowed:.0%}" if self.allowed >= 0.01 else f"{self.allowed:g} rel"
        sign = {"higher": "-", "lower": "+", "equal": "±"}[self.better]
        return f"{sign}{amount}"


@dataclass(frozen=True)
class Override:
    """A tolerance for values whose key (and optionally task / method) match shell-style patterns."""

    match: str
    fields: Mapping[str, Any]
    task: str = "*"
    method: str = "*"

    def applies(self, cell: CellKey, key: str) -> bool:
        return (
            fnmatch.fnmatchcase(key, self.match)
            and fnmatch.fnmatchcase(cell.task, self.task)
            and fnmatch.fnmatchcase(cell.method, self.method)
        )


@dataclass(frozen=True)
class Tolerances:
    """Named defaults per category, then overrides in file order; the last matching override wins."""

    defaults: Mapping[str, Tolerance]
    overrides: tuple[Override, ...] = ()

    def for_value(self, cell: CellKey, key: str) -> Tolerance:
        category = key.split("/", 1)[0]
        if category not in self.defaults:
            raise UsageError(f"no tolerance for category {category!r} (value {key}); known: {', '.join(self.defaults)}")
        tolerance = self.defaults[category]
        for override in self.overrides:
            if override.applies(cell, key):
                tolerance = replace(tolerance, **override.fields)
        return tolerance


_TOLERANCE_FIELDS = {"mode", "allowed", "better", "enabled", "why"}


def _check_tolerance_fields(fields: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(fields) - _TOLERANCE_FIELDS
    if unknown:
        raise UsageError(f"{where}: unknown tolerance fields {sorted(unknown)}; allowed: {sorted(_TOLERANCE_FIELDS)}")
    if "mode" in fields and fields["mode"] not in MODES:
        raise UsageError(f"{where}: mode {fields['mode']!r}; allowed: {', '.join(MODES)}")
    if "better" in fields and fields["better"] not in BETTER:
        raise UsageError(f"{where}: better {fields['better']!r}; allowed: {', '.join(BETTER)}")
    if "allowed" in fields and (
        isinstance(fields["allowed"], bool)
        or not isinstance(fields["allowed"], (int, float))
        or not fields["allowed"] >= 0
    ):
        raise UsageError(f"{where}: allowed must be a number >= 0, got {fields['allowed']!r}")
    if "enabled" in fields and not isinstance(fields["enabled"], bool):
        raise UsageError(f"{where}: enabled must be true or false, got {fields['enabled']!r}")
    return {k: (float(v) if k == "allowed" else v) for k, v in fields.items()}


def _merge_tolerances(base: Tolerances | None, data: Any, source: str) -> Tolerances:
    if not isinstance(data, dict):
        raise UsageError(f"malformed tolerances file {source}: expected an object with 'defaults' and 'overrides'")
    defaults = dict(base.defaults) if base else {}
    raw_defaults = data.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise UsageError(f"malformed tolerances file {source}: 'defaults' must be an object")
    for category, fields in raw_defaults.items():
        where = f"tolerances file {source}, defaults.{category}"
        if category not in CATEGORIES:
            raise UsageError(f"{where}: unknown category; allowed: {', '.join(CATEGORIES)}")
        if not isinstance(fields, dict):
            raise UsageError(f"{where}: expected an object")
        fields = _check_tolerance_fields(fields, where)
        if category in defaults:
            defaults[category] = replace(defaults[category], **fields)
        else:
            missing = {"mode", "allowed", "better"} - fields.keys()
            if missing:
                raise UsageError(f"{where}: lacks {', '.join(sorted(missing))}")
            defaults[category] = Tolerance(**fields)
    overrides = list(base.overrides) if base else []
    raw_overrides = data.get("overrides", [])
    if not isinstance(raw_overrides, list):
        raise UsageError(f"malformed tolerances file {source}: 'overrides' must be a list")
    for index, item in enumerate(raw_overrides):
        where = f"tolerances file {source}, overrides[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("match"), str):
            raise UsageError(f"{where}: expected an object with a 'match' pattern")
        selectors = {k: item[k] for k in ("task", "method") if k in item}
        fields = _check_tolerance_fields({k: v for k, v in item.items() if k not in {"match", "task", "method"}}, where)
        overrides.append(Override(match=item["match"], fields=fields, **selectors))
    missing = set(CATEGORIES) - defaults.keys()
    if missing:
        raise UsageError(f"tolerances file {source}: no defaults for {', '.join(sorted(missing))}")
    return Tolerances(defaults=defaults, overrides=tuple(overrides))


def default_tolerances() -> Tolerances:
    """The documented defaults shipped in `vistog_bench/regress_tolerances.json`."""
    text = resources.files("vistog_bench").joinpath(DEFAULT_TOLERANCES).read_text(encoding="utf-8")
    return _merge_tolerances(None, json.loads(text), DEFAULT_TOLERANCES)


def load_tolerances(path: str | Path | None = None) -> Tolerances:
    """The defaults, with the file at `path` laid over them (its defaults per field, its overrides after ours)."""
    tolerances = default_tolerances()
    if path is None:
        return tolerances
    path = Path(path)
    return _merge_tolerances(tolerances, read_json(path, "tolerances file"), str(path))


# ---------------------------------------------------------------------------------------------------------------
# Values derived from a run
# ---------------------------------------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def full_budget_cell(cell: CellKey, cells: Iterable[CellKey]) -> CellKey:
    """The cell whose score and latency count as 100 % for `cell`: `none` at its largest budget, else the same
    method at its largest budget (both for the same task)."""
    same_task = [c for c in cells if c.task == cell.task]
    unreduced = [c for c in same_task if c.method == FULL_BUDGET_METHOD]
    pool = unreduced or [c for c in same_task if c.method == cell.method]
    return max(pool, key=lambda c: c.budget, default=cell)


def _profile_groups(cell: CellKey, profile: list[ProfileRecord]) -> dict[str, list[ProfileRecord]]:
    """The profile records that measure `cell`, grouped as described in the module docstring."""
    mine = [r for r in profile if r.method == cell.method and r.budget == cell.budget]
    controlled = [r for r in mine if r.kind == "controlled" and r.task in (None, cell.task)]
    if controlled:
        groups: dict[str, list[ProfileRecord]] = {}
        for record in controlled:
            groups.setdefault(f"controlled,{record.path},bs{record.batch_size}", []).append(record)
        return groups
    requests = [r for r in mine if r.kind == "request"]
    for_task = [r for r in requests if r.task == cell.task] or [r for r in requests if r.task is None]
    return {"request": for_task} if for_task else {}


def _median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if _finite(v)]
    return float(statistics.median(finite)) if finite else None


def _profile_values(group: str, records: list[ProfileRecord]) -> dict[str, float]:
    values: dict[str, float] = {}
    total_ms = _median(r.total_ms for r in records)
    if total_ms is not None:
        values[f"latency/total_ms[{group}]"] = total_ms
    flop_keys = sorted({k for r in records for k, v in r.flops.items() if _finite(v)})
    summarise = statistics.median if group != "request" else statistics.fmean
    flops = {}
    for key in flop_keys:
        present = [float(r.flops[key]) for r in records if _finite(r.flops.get(key))]
        flops[key] = float(summarise(present))
    if flops and "total" not in flops:
        flops["total"] = sum(flops.values())
    values.update({f"flops/{key}[{group}]": v for key, v in flops.items()})
    peak_keys = sorted({k for r in records for k, v in r.peak_memory_bytes.items() if _finite(v)})
    for key in peak_keys:
        values[f"memory/peak_memory_bytes.{key}[{group}]"] = float(
            max(r.peak_memory_bytes[key] for r in records if _finite(r.peak_memory_bytes.get(key)))
        )
    kv = [r.kv_cache_bytes for r in records if _finite(r.kv_cache_bytes)]
    if kv:
        values[f"memory/kv_cache_bytes[{group}]"] = float(max(kv))
    return values


def derive_values(cells: list[CellResult], profile: list[ProfileRecord]) -> dict[CellKey, dict[str, float]]:
    """Every comparable value of every cell: `{cell: {"<category>/<name>": value}}` (see the module docstring)."""
    by_key = {c.key: c for c in cells}
    ok_keys = [c.key for c in cells if c.ok]
    derived: dict[CellKey, dict[str, float]] = {}
    for cell in cells:
        values: dict[str, float] = {"samples/n_samples": float(cell.n_samples)}
        if cell.ok:
            values.update({f"accuracy/{k}": float(v) for k, v in cell.metrics.items() if _finite(v)})
            reference = by_key[full_budget_cell(cell.key, ok_keys)]
            for metric, score in cell.metrics.items():
                full = reference.metrics.get(metric)
                if _finite(score) and _finite(full) and full != 0:
                    values[f"retention/{metric}"] = float(score) / float(full)
            groups = _profile_groups(cell.key, profile)
            reference_groups = _profile_groups(reference.key, profile)
            for group, records in groups.items():
                mine = _profile_values(group, records)
                values.update(mine)
                ours_ms = mine.get(f"latency/total_ms[{group}]")
                full_ms = _median(r.total_ms for r in reference_groups.get(group, []))
                if ours_ms and full_ms:
                    values[f"speedup/total_ms[{group}]"] = full_ms / ours_ms
        derived[cell.key] = values
    return derived


def derive_run_values(run: RunDir) -> dict[CellKey, dict[str, float]]:
    return derive_values(run.cells(), run.profile())


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineCell:
    key: CellKey
    status: str
    values: dict[str, float]


@dataclass(frozen=True)
class Baseline:
    name: str
    cells: tuple[BaselineCell, ...]
    manifest: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def parse_baseline(data: Any, source: str) -> Baseline:
    """A baseline from its JSON form; anything malformed is a UsageError naming the file and the field."""
    where = f"malformed baseline {source}"
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object")
    if data.get("format") != BASELINE_FORMAT:
        raise UsageError(f"{where}: format {data.get('format')!r}, expected {BASELINE_FORMAT!r}")
    if not isinstance(data.get("cells"), list):
        raise UsageError(f"{where}: 'cells' must be a list")
    cells = []
    for index, item in enumerate(data["cells"]):
        if not isinstance(item, dict):
            raise UsageError(f"{where}: cells[{index}] is not an object")
        missing = [k for k in ("task", "method", "budget", "status", "values") if k not in item]
        if missing:
            raise UsageError(f"{where}: cells[{index}] lacks {', '.join(missing)}")
        if not isinstance(item["budget"], int) or isinstance(item["budget"], bool):
            raise UsageError(f"{where}: cells[{index}].budget must be an integer, got {item['budget']!r}")
        values = item["values"]
        if not isinstance(values, dict) or not all(_finite(v) for v in values.values()):
            raise UsageError(f"{where}: cells[{index}].values must map names to finite numbers")
        bad = [k for k in values if k.split("/", 1)[0] not in CATEGORIES]
        if bad:
            raise UsageError(f"{where}: cells[{index}] has values of unknown category: {', '.join(bad)}")
        key = CellKey(str(item["task"]), str(item["method"]), item["budget"])
        cells.append(BaselineCell(key, str(item["status"]), {k: float(v) for k, v in values.items()}))
    if not cells:
        raise UsageError(f"baseline {source} has no cells: nothing to compare a run with "
                         "(write one with `vistog-bench baseline update RUN_DIR --name NAME`)")
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise UsageError(f"{where}: a cell is listed twice")
    manifest = data.get("manifest") or {}
    if not isinstance(manifest, dict):
        raise UsageError(f"{where}: 'manifest' must be an object")
    return Baseline(name=str(data.get("name", "")), cells=tuple(cells), manifest=manifest, source=source)


def load_baseline(path: str | Path) -> Baseline:
    path = Path(path)
    return parse_baseline(read_json(path, "baseline"), str(path))


# ---------------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One compared value: (baseline, now, delta) under a tolerance, and the verdict."""

    cell: CellKey
    key: str
    baseline: float | str | None
    now: float | str | None
    allowed: str
    verdict: str
    detail: str = ""

    @property
    def delta(self) -> float | None:
        if _finite(self.baseline) and _finite(self.now):
            return float(self.now) - float(self.baseline)
        return None

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    @property
    def name(self) -> str:
        return f"{self.cell.slug()}::{self.key}"


def judge(baseline: float, now: float, tolerance: Tolerance) -> str:
    """pass / improved / FAIL for one value."""
    slack = tolerance.slack(baseline) + _ROUNDING * max(1.0, abs(baseline))
    if tolerance.better == "equal":
        return FAIL if abs(now - baseline) > slack else PASS
    worse_by = baseline - now if tolerance.better == "higher" else now - baseline
    if worse_by > slack:
        return FAIL
    return IMPROVED if -worse_by > slack else PASS


@dataclass(frozen=True)
class CheckReport:
    """The outcome of one check: every finding, notes on what differs around the numbers, and the exit code."""

    run_dir: str
    baseline: str
    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.failed)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.verdict] = counts.get(finding.verdict, 0) + 1
        return counts

    def headline(self) -> str:
        counts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(self.counts().items()))
        state = "REGRESSION" if self.exit_code else "OK"
        return f"{state}: {len(self.findings)} values compared with {self.baseline} ({counts or 'nothing'})"

    def rows(self, findings: Iterable[Finding] | None = None) -> list[list[str]]:
        return [
            [f.cell.task, f.cell.method, str(f.cell.budget), f.key, _fmt(f.baseline), _fmt(f.now),
             _fmt_delta(f), f.allowed, f.verdict]
            for f in (self.findings if findings is None else findings)
        ]

    def to_table(self) -> str:
        from tabulate import tabulate

        return tabulate(self.rows(), headers=TABLE_HEADERS, tablefmt="simple", disable_numparse=True)

    def to_markdown(self) -> str:
        from tabulate import tabulate

        lines = [f"## vistog-bench check: {'regression' if self.exit_code else 'pass'}", "", self.headline(), ""]
        lines += [f"- run: `{self.run_dir}`", f"- baseline: `{self.baseline}`"]
        lines += [f"- note: {note}" for note in self.notes]
        lines.append("")
        if self.failures:
            lines += ["### Failures", ""]
            lines.append(tabulate(self.rows(self.failures), headers=TABLE_HEADERS, tablefmt="github", disable_numparse=True))
            lines.append("")
        lines += ["<details><summary>All compared values</summary>", ""]
        lines.append(tabulate(self.rows(), headers=TABLE_HEADERS, tablefmt="github", disable_numparse=True))
        lines += ["", "</details>", ""]
        return "\n".join(lines)

    def to_junit_xml(self) -> str:
        """One test case per compared value, grouped in one suite per cell; failures carry (baseline, now, delta)."""
        root = ElementTree.Element("testsuites", name="vistog-bench check", tests=str(len(self.findings)),
                                   failures=str(len(self.failures)))
        by_cell: dict[CellKey, list[Finding]] = {}
        for finding in self.findings:
            by_cell.setdefault(finding.cell, []).append(finding)
        for cell, findings in by_cell.items():
            failures = [f for f in findings if f.failed]
            suite = ElementTree.SubElement(root, "testsuite", name=cell.slug(), tests=str(len(findings)),
                                           failures=str(len(failures)), errors="0", skipped="0")
            for finding in findings:
                case = ElementTree.SubElement(suite, "testcase", classname=f"vistog_bench.check.{cell.slug()}",
                                              name=finding.key)
                message = (f"{finding.verdict}: baseline {_fmt(finding.baseline)}, now {_fmt(finding.now)}, "
                           f"delta {_fmt_delta(finding)}, allowed {finding.allowed}")
                if finding.detail:
                    message += f" ({finding.detail})"
                if finding.failed:
                    ElementTree.SubElement(case, "failure", message=message, type=finding.verdict).text = message
                else:
                    ElementTree.SubElement(case, "system-out").text = message
        ElementTree.indent(root)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


TABLE_HEADERS = ["task", "method", "budget", "value", "baseline", "now", "delta", "allowed", "verdict"]


def _fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if abs(value) >= 1e-3 else f"{value:.3e}"


def _fmt_delta(finding: Finding) -> str:
    delta = finding.delta
    if delta is None:
        return "-"
    text = f"{delta:+.4g}"
    if finding.baseline:
        text += f" ({delta / abs(float(finding.baseline)):+.1%})"
    return text


def compare(baseline: Baseline, current: Mapping[CellKey, Mapping[str, float]], statuses: Mapping[CellKey, str],
            tolerances: Tolerances, *, run_dir: str = "", notes: Iterable[str] = ()) -> CheckReport:
    """Compare derived values with a baseline: shared keys under their tolerance, baseline-only keys as missing
    (a failure), run-only keys and cells as new (listed, not judged)."""
    findings: list[Finding] = []
    for cell in baseline.cells:
        if cell.key not in statuses:
            findings.append(Finding(cell.key, "cell", cell.status, None, "present", MISSING,
                                    f"cell not in the run ({len(cell.values)} baseline values unchecked)"))
            continue
        status = statuses[cell.key]
        if status != cell.status and cell.status == STATUS_OK:
            # One failure for the cell, not one `missing` per value it no longer has.
            findings.append(Finding(cell.key, "status", cell.status, status, "same", FAIL,
                                    f"{len(cell.values)} baseline values unchecked"))
            continue
        now_values = current.get(cell.key, {})
        if status != cell.status and status == STATUS_OK:
            # The baseline's values described a failure (no samples, no scores): nothing to compare them with.
            findings.append(Finding(cell.key, "status", cell.status, status, "same", FIXED,
                                    "baseline cell was not ok; its values are not compared"))
            for key in sorted(now_values):
                if tolerances.for_value(cell.key, key).enabled:
                    findings.append(Finding(cell.key, key, None, now_values[key], "-", NEW, "cell fixed since the baseline"))
            continue
        if status != cell.status:
            findings.append(Finding(cell.key, "status", cell.status, status, "same", PASS))
        for key, old in sorted(cell.values.items()):
            tolerance = tolerances.for_value(cell.key, key)
            if not tolerance.enabled:
                continue
            if key not in now_values:
                findings.append(Finding(cell.key, key, old, None, tolerance.describe(), MISSING, "not in the run"))
                continue
            now = now_values[key]
            findings.append(Finding(cell.key, key, old, now, tolerance.describe(), judge(old, now, tolerance),
                                    tolerance.why))
        for key in sorted(set(now_values) - set(cell.values)):
            if tolerances.for_value(cell.key, key).enabled:
                findings.append(Finding(cell.key, key, None, now_values[key], "-", NEW, "not in the baseline"))
    baseline_keys = {c.key for c in baseline.cells}
    for key in sorted(set(statuses) - baseline_keys, key=lambda k: (k.task, k.method, k.budget)):
        findings.append(Finding(key, "cell", None, statuses[key], "-", NEW, "cell not in the baseline"))
    return CheckReport(run_dir=run_dir, baseline=baseline.source or baseline.name, findings=tuple(findings),
                       notes=tuple(notes))


def _manifest_notes(baseline: Baseline, run: RunDir) -> list[str]:
    """Differences around the numbers that explain them but are not regressions themselves."""
    manifest = run.manifest()
    notes = []
    old_device, new_device = baseline.manifest.get("device") or {}, manifest.device or {}
    old_name, new_name = old_device.get("name"), new_device.get("name")
    if old_name != new_name:
        notes.append(f"device differs: baseline {old_name!r}, run {new_name!r}; timing and memory values compare machines")
    old_sha = baseline.manifest.get("git_sha")
    if old_sha and old_sha != manifest.git_sha:
        notes.append(f"code: baseline at {str(old_sha)[:12]}, run at {str(manifest.git_sha)[:12]}")
    return notes


def check_run(run_dir: str | Path, baseline: str | Path | Baseline,
              tolerances: str | Path | Tolerances | None = None) -> CheckReport:
    """Check one run folder against a baseline (a path or a loaded `Baseline`); tolerances default to ours."""
    run = load_run(run_dir)
    baseline = baseline if isinstance(baseline, Baseline) else load_baseline(baseline)
    tolerances = tolerances if isinstance(tolerances, Tolerances) else load_tolerances(tolerances)
    cells = run.cells()
    values = derive_values(cells, run.profile())
    statuses = {c.key: c.status for c in cells}
    return compare(baseline, values, statuses, tolerances, run_dir=str(run_dir), notes=_manifest_notes(baseline, run))


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, results/<run_id>/")
    parser.add_argument("--baseline", required=True, metavar="FILE",
                        help="baseline JSON written by `vistog-bench baseline update` (results/baselines/NAME.json)")
    parser.add_argument("--tolerances", metavar="FILE",
                        help="JSON laid over the defaults in vistog_bench/regress_tolerances.json (see docs/regression.md)")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML here (one test case per compared value)")
    parser.add_argument("--summary", metavar="FILE",
                        help="write a Markdown summary here (CI: `cat` it into $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the headline, not every value")


def main(args: argparse.Namespace) -> int:
    outputs = [(flag, path) for flag, path in (("--junit", args.junit), ("--summary", args.summary)) if path]
    for flag, path in outputs:
        check_writable_file(path, flag)
    report = check_run(args.run_dir, args.baseline, args.tolerances)
    # Files first: a verdict on stdout is only printed once nothing can fail any more.
    if args.junit:
        write_output_text(args.junit, report.to_junit_xml(), "--junit")
    if args.summary:
        write_output_text(args.summary, report.to_markdown(), "--summary")
    if args.quiet:
        if report.failures:
            from tabulate import tabulate

            print(tabulate(report.rows(report.failures), headers=TABLE_HEADERS, tablefmt="simple", disable_numparse=True))
    else:
        print(report.to_table())
    for note in report.notes:
        print(f"note: {note}")
    print(report.headline())
    sys.stdout.flush()
    return report.exit_code


__all__ = [
    "Baseline", "BaselineCell", "CheckReport", "Finding", "Tolerance", "Tolerances", "add_arguments", "check_run",
    "compare", "default_tolerances", "derive_run_values", "derive_values", "full_budget_cell", "judge",
    "load_baseline", "load_tolerances", "main", "parse_baseline",
]
