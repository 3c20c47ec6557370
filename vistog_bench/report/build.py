"""Write a whole report folder from run folders:

    <out>/report.md  report.tex  report.html      every table (and, in md/html, every figure) in one document
    <out>/tables/<name>.{md,tex,csv}             main, reported, stages, task_<task>
    <out>/figures/<name>.{png,svg}               the four figures

Reports are generated from result files only and rewritten whole on every call. Every file is written to a temporary
name beside it and renamed when complete (`results.atomic_file`), so a full disk or a kill leaves each file as it was
or whole, never torn; the full-disk error names the file (exit 3).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import markupsafe

from ..errors import UsageError
from ..results import write_text_atomic
from . import render
from .data import ReportData, build_report_data, read_runs
from .figures import render_figures, save_figure
from .reference import ReferenceSet, default_reference_files, load_reference
from .tables import Table, main_table, reference_table, stage_table, task_tables

FORMATS = ("md", "tex", "csv", "html")
_RENDERERS = {"md": render.to_markdown, "tex": render.to_latex, "csv": render.to_csv}


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(
            f"unknown format {', '.join(map(repr, unknown)) or repr(text)} (allowed: {', '.join(FORMATS)})"
        )
    return formats


@dataclass(frozen=True)
class Report:
    """What a report holds before it is written: tables in order, figure footer, data."""

    data: ReportData
    reference: ReferenceSet | None
    tables: list[Table]
    footer: list[str]


def build_report(run_dirs: Sequence[str | Path], reference_files: Sequence[str | Path] | None = None) -> Report:
    """Read the runs (and reference files: None = `results/reference/*.csv` if present, [] = none) into tables."""
    runs = read_runs([Path(p) for p in run_dirs])
    data = build_report_data(runs)
    files = default_reference_files() if reference_files is None else [Path(p) for p in reference_files]
    reference = load_reference(files) if files else None
    main = main_table(data)
    tables = [main]
    if reference is not None and reference.rows:
        tables.append(reference_table(reference))
    tables.append(stage_table(data))
    tables += task_tables(data)
    footer = [line for line in main.provenance[:2]]
    return Report(data, reference, tables, footer)


def _leading_tables(report: Report) -> tuple[list[Table], list[Table]]:
    """(the main table and the reported block, when there is one), (every other table)."""
    count = 2 if len(report.tables) > 1 and report.tables[1].name == "reported" else 1
    return report.tables[:count], report.tables[count:]


def _html_page(report: Report, figures: dict[str, Path]) -> str:
    """One self-contained page (`templates/report.html.j2`): inline CSS, figures as base64 PNG, no scripts."""
    leading, details = _leading_tables(report)
    pictures = [
        {
            "name": name,
            "title": name.replace("_", " "),
            "png_base64": base64.b64encode(png.read_bytes()).decode("ascii"),
        }
        for name, png in figures.items()
    ]
    return (
        render.templates()
        .get_template("report.html.j2")
        .render(
            run_ids=", ".join(report.data.run_ids),
            footer=report.footer,
            figures=pictures,
            leading=[markupsafe.Markup(render.to_html(t)) for t in leading],
            details=[markupsafe.Markup(render.to_html(t)) for t in details],
        )
    )


def _markdown_document(report: Report, figures: dict[str, Path], out: Path) -> str:
    leading, details = _leading_tables(report)
    parts = [f"# vistog-bench report: {', '.join(report.data.run_ids)}", ""]
    parts += [render.to_markdown(t, heading_level=2) for t in leading]
    parts.append("## Figures\n")
    parts += [f"![{name}]({png.relative_to(out).as_posix()})\n" for name, png in figures.items()]
    parts += [render.to_markdown(t, heading_level=2) for t in details]
    return "\n".join(parts)


def write_report(report: Report, out: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write tables in `formats`, the figures (always), and the combined documents; return the paths written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out is a file, not a folder: {out}")
    written: list[Path] = []
    tables_dir, figures_dir = out / "tables", out / "figures"
    tables_dir.mkdir(parents=True, exist_ok=True)
    for table in report.tables:
        for fmt in formats:
            if fmt in _RENDERERS:
                path = tables_dir / f"{table.name}.{fmt}"
                write_text_atomic(path, _RENDERERS[fmt](table))
                written.append(path)
    figures = render_figures(report.data, report.reference, report.footer)
    pngs: dict[str, Path] = {}
    for name, fig in figures.items():
        paths = save_figure(fig, figures_dir, name)
        pngs[name] = paths[0]
        written += paths
    if "md" in formats:
        path = out / "report.md"
        write_text_atomic(path, _markdown_document(report, pngs, out))
        written.append(path)
    if "tex" in formats:
        path = out / "report.tex"
        write_text_atomic(path, "\n".join(render.to_latex(t) for t in report.tables))
        written.append(path)
    if "html" in formats:
        path = out / "report.html"
        write_text_atomic(path, _html_page(report, pngs))
        written.append(path)
    return written
