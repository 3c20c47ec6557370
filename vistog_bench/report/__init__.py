"""Reports from result folders: paper-style tables (Markdown, LaTeX booktabs, CSV), figures (PNG, SVG) and one
self-contained HTML page. Reads only files; never runs a model.

    from vistog_bench.report import build_report, write_report
    report = build_report(["results/run-a"])          # tables + data, reference CSVs from results/reference/
    write_report(report, "reports/run-a", formats=("md", "tex", "csv", "html"))

Heavy imports (pandas, matplotlib) wait until one of these names is used, so `vistog-bench --help` stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_report": "build",
    "write_report": "build",
    "parse_formats": "build",
    "Report": "build",
    "read_runs": "data",
    "build_report_data": "data",
    "ReportData": "data",
    "main_table": "tables",
    "reference_table": "tables",
    "stage_table": "tables",
    "task_tables": "tables",
    "load_reference": "reference",
    "to_markdown": "render",
    "to_latex": "render",
    "to_csv": "render",
    "to_html": "render",
    "render_figures": "figures",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
