"""A check's findings as a console table, a Markdown summary (CI step summaries) and JUnit XML (one test case per
compared value, one suite per cell)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from tabulate import tabulate

if TYPE_CHECKING:
    from .compare import CheckReport, Finding

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


def rows(findings: Iterable[Finding]) -> list[list[str]]:
    return [
        [
            f.cell.task,
            f.cell.method,
            str(f.cell.budget),
            f.key,
            _fmt(f.baseline),
            _fmt(f.now),
            _fmt_delta(f),
            f.allowed,
            f.verdict,
        ]
        for f in findings
    ]


def text_table(findings: Iterable[Finding], tablefmt: str = "simple") -> str:
    return tabulate(rows(findings), headers=TABLE_HEADERS, tablefmt=tablefmt, disable_numparse=True)


def markdown(report: CheckReport) -> str:
    lines = [f"## vistog-bench check: {'regression' if report.exit_code else 'pass'}", "", report.headline(), ""]
    lines += [f"- run: `{report.run_dir}`", f"- baseline: `{report.baseline}`"]
    lines += [f"- note: {note}" for note in report.notes]
    lines.append("")
    if report.failures:
        lines += ["### Failures", "", text_table(report.failures, "github"), ""]
    lines += [
        "<details><summary>All compared values</summary>",
        "",
        text_table(report.findings, "github"),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def _message(finding: Finding) -> str:
    message = (
        f"{finding.verdict}: baseline {_fmt(finding.baseline)}, now {_fmt(finding.now)}, "
        f"delta {_fmt_delta(finding)}, allowed {finding.allowed}"
    )
    return message + (f" ({finding.detail})" if finding.detail else "")


def junit_xml(report: CheckReport) -> str:
    """One test case per compared value, grouped in one suite per cell; failures carry (baseline, now, delta)."""
    root = ElementTree.Element(
        "testsuites", name="vistog-bench check", tests=str(len(report.findings)), failures=str(len(report.failures))
    )
    by_cell: dict = {}
    for finding in report.findings:
        by_cell.setdefault(finding.cell, []).append(finding)
    for cell, findings in by_cell.items():
        failures = [f for f in findings if f.failed]
        suite = ElementTree.SubElement(
            root,
            "testsuite",
            name=cell.slug(),
            tests=str(len(findings)),
            failures=str(len(failures)),
            errors="0",
            skipped="0",
        )
        for finding in findings:
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"vistog_bench.check.{cell.slug()}", name=finding.key
            )
            message = _message(finding)
            if finding.failed:
                ElementTree.SubElement(case, "failure", message=message, type=finding.verdict).text = message
            else:
                ElementTree.SubElement(case, "system-out").text = message
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, encoding="unicode") + "\n"


__all__ = ["TABLE_HEADERS", "junit_xml", "markdown", "rows", "text_table"]
