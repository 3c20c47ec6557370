"""Compare a run's values with a baseline's, key by key, under named tolerances: findings and an exit code.

Every value in the baseline must be found in the run: a missing cell or value is a failure (exit 1), never a
silent pass. A value only in the run is listed as `new`. A baseline cell that was not `ok` and now is `ok` is
`fixed` (not a failure): its baseline values described a failure, so they are not compared and the run's values are
listed as `new`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..analysis import finite, hardware_groups
from ..errors import UsageError
from ..results import STATUS_OK, CellKey, RunDir, load_run
from . import render
from .baseline import Baseline, load_baseline
from .tolerances import Tolerance, Tolerances, load_tolerances
from .values import derive_values

PASS, IMPROVED, FIXED, FAIL, MISSING, NEW = "pass", "improved", "fixed", "FAIL", "missing", "new"
FAILING = (FAIL, MISSING)

# Floats written to JSON and read back, or summed in another order, differ in the last bits: never a regression.
_ROUNDING = 1e-12


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
        old, now = finite(self.baseline), finite(self.now)
        return None if old is None or now is None else now - old

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
        return render.rows(self.findings if findings is None else findings)

    def to_table(self) -> str:
        return render.text_table(self.findings)

    def to_markdown(self) -> str:
        return render.markdown(self)

    def to_junit_xml(self) -> str:
        return render.junit_xml(self)


def _status_findings(
    cell, status: str, now_values: Mapping[str, float], tolerances: Tolerances
) -> list[Finding] | None:
    """Findings when the cell's status changed in a way that decides it alone (None: compare its values)."""
    if status == cell.status or (cell.status != STATUS_OK and status != STATUS_OK):
        return None
    if cell.status == STATUS_OK:  # one failure for the cell, not one `missing` per value it no longer has
        return [
            Finding(
                cell.key, "status", cell.status, status, "same", FAIL, f"{len(cell.values)} baseline values unchecked"
            )
        ]
    # the baseline's values described a failure (no samples, no scores): nothing to compare them with
    findings = [
        Finding(
            cell.key,
            "status",
            cell.status,
            status,
            "same",
            FIXED,
            "baseline cell was not ok; its values are not compared",
        )
    ]
    findings += [
        Finding(cell.key, key, None, now_values[key], "-", NEW, "cell fixed since the baseline")
        for key in sorted(now_values)
        if tolerances.for_value(cell.key, key).enabled
    ]
    return findings


def _value_findings(cell, now_values: Mapping[str, float], tolerances: Tolerances) -> list[Finding]:
    findings = []
    for key, old in sorted(cell.values.items()):
        tolerance = tolerances.for_value(cell.key, key)
        if not tolerance.enabled:
            continue
        if key not in now_values:
            findings.append(Finding(cell.key, key, old, None, tolerance.describe(), MISSING, "not in the run"))
            continue
        now = now_values[key]
        findings.append(
            Finding(cell.key, key, old, now, tolerance.describe(), judge(old, now, tolerance), tolerance.why)
        )
    findings += [
        Finding(cell.key, key, None, now_values[key], "-", NEW, "not in the baseline")
        for key in sorted(set(now_values) - set(cell.values))
        if tolerances.for_value(cell.key, key).enabled
    ]
    return findings


def compare(
    baseline: Baseline,
    current: Mapping[CellKey, Mapping[str, float]],
    statuses: Mapping[CellKey, str],
    tolerances: Tolerances,
    *,
    run_dir: str = "",
    notes: Iterable[str] = (),
) -> CheckReport:
    """Compare derived values with a baseline: shared keys under their tolerance, baseline-only keys as missing
    (a failure), run-only keys and cells as new (listed, not judged)."""
    findings: list[Finding] = []
    for cell in baseline.cells:
        if cell.key not in statuses:
            findings.append(
                Finding(
                    cell.key,
                    "cell",
                    cell.status,
                    None,
                    "present",
                    MISSING,
                    f"cell not in the run ({len(cell.values)} baseline values unchecked)",
                )
            )
            continue
        status, now_values = statuses[cell.key], current.get(cell.key, {})
        decided = _status_findings(cell, status, now_values, tolerances)
        if decided is not None:
            findings += decided
            continue
        if status != cell.status:
            findings.append(Finding(cell.key, "status", cell.status, status, "same", PASS))
        findings += _value_findings(cell, now_values, tolerances)
    baseline_keys = {c.key for c in baseline.cells}
    for key in sorted(set(statuses) - baseline_keys, key=lambda k: (k.task, k.method, k.budget)):
        findings.append(Finding(key, "cell", None, statuses[key], "-", NEW, "cell not in the baseline"))
    return CheckReport(
        run_dir=run_dir, baseline=baseline.source or baseline.name, findings=tuple(findings), notes=tuple(notes)
    )


def _manifest_notes(baseline: Baseline, run: RunDir) -> list[str]:
    """Differences around the numbers that explain them but are not regressions themselves."""
    manifest = run.manifest()
    notes = []
    old_device, new_device = baseline.manifest.get("device") or {}, manifest.device or {}
    old_name, new_name = old_device.get("name"), new_device.get("name")
    if old_name != new_name:
        notes.append(
            f"device differs: baseline {old_name!r}, run {new_name!r}; timing and memory values compare machines"
        )
    old_sha = baseline.manifest.get("git_sha")
    if old_sha and old_sha != manifest.git_sha:
        notes.append(f"code: baseline at {str(old_sha)[:12]}, run at {str(manifest.git_sha)[:12]}")
    return notes


def check_run(
    run_dir: str | Path, baseline: str | Path | Baseline, tolerances: str | Path | Tolerances | None = None
) -> CheckReport:
    """Check one run folder against a baseline (a path or a loaded `Baseline`); tolerances default to ours."""
    run = load_run(run_dir)
    baseline = baseline if isinstance(baseline, Baseline) else load_baseline(baseline)
    tolerances = tolerances if isinstance(tolerances, Tolerances) else load_tolerances(tolerances)
    cells = run.merge()  # the cells workers recorded so far
    for line in run.unfinished():
        print(f"vistog-bench check: {run.path}: {line}", file=sys.stderr)
    groups = hardware_groups(cells)
    if len(groups) > 1:
        raise UsageError(
            f"{run.path}: its cells ran on {len(groups)} hardware records ({'; '.join(sorted(groups))}): timings "
            "are not compared across hardware; check a run made on one machine kind"
        )
    values = derive_values(cells, run.profile())
    statuses = {c.key: c.status for c in cells}
    return compare(baseline, values, statuses, tolerances, run_dir=str(run_dir), notes=_manifest_notes(baseline, run))


__all__ = ["CheckReport", "Finding", "check_run", "compare", "judge"]
