"""Write a whole report folder from run folders:

    <out>/report.md  report.tex  report.html      every table (and, in md/html, every figure) in one document
    <out>/tables/<name>.{md,tex,csv}             main, reported, stages, task_<task>
    <out>/figures/<name>.{png,svg}               the four figures

Reports are generated from result files only and rewritten whole on every call.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from . import render
from .data import ReportData, build_report_data, read_runs
from .figures import render_figures, save_figure
from .reference import ReferenceSet, default_reference_files, load_reference
from .tables import Table, main_table, reference_table, stage_table, task_tables

FORMATS = ("md", "tex", "csv", "html")
_RENDERERS = {"md": render.to_markdown, "tex": render.to_latex, "csv": render.to_csv}

HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; }
thead th { border-top: 2px solid #222; border-bottom: 1px solid #222; }
tbody tr:last-child td { border-bottom: 2px solid #222; }
tr.block td { border-top: 1px solid #222; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.txt, th.txt { text-align: left; }
p.prov { font-size: 12px; color: #555; margin: 2px 0; }
p.note { font-size: 12px; margin: 2px 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
"""


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown format {', '.join(map(repr, unknown)) or repr(text)} (allowed: {', '.join(FORMATS)})")
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


def _figure_html(name: str, png: Path) -> str:
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    title = name.replace("_", " ")
    return (f'<figure id="fig-{name}"><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>")


def _html_page(report: Report, figures: dict[str, Path]) -> str:
    ids = ", ".join(report.data.run_ids)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>vistog-bench report: {html.escape(ids)}</title>", f"<style>{HTML_STYLE}</style></head><body>",
             f"<h1>vistog-bench report: {html.escape(ids)}</h1>"]
    parts += [f'<p class="prov">{html.escape(line)}</p>' for line in report.footer]
    tables = list(report.tables)
    parts.append(render.to_html(tables.pop(0)))
    if tables and tables[0].name == "reported":
        parts.append(render.to_html(tables.pop(0)))
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(name, png) for name, png in figures.items()]
    parts.append("<h2>Latency and per-task details</h2>")
    parts += [render.to_html(t) for t in tables]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _markdown_document(report: Report, figures: dict[str, Path], out: Path) -> str:
    parts = [f"# vistog-bench report: {', '.join(report.data.run_ids)}", ""]
    tables = list(report.tables)
    parts.append(render.to_markdown(tables.pop(0), heading_level=2))
    if tables and tables[0].name == "reported":
        parts.append(render.to_markdown(tables.pop(0), heading_level=2))
    parts.append("## Figures\n")
    parts += [f"![{name}]({png.relative_to(out).as_posix()})\n" for name, png in figures.items()]
    parts += [render.to_markdown(t, heading_level=2) for t in tables]
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
                path.write_text(_RENDERERS[fmt](table), encoding="utf-8")
                written.append(path)
    figures = render_figures(report.data, report.reference, report.footer)
    pngs: dict[str, Path] = {}
    for name, fig in figures.items():
        paths = save_figure(fig, figures_dir, name)
        pngs[name] = paths[0]
        written += paths
    if "md" in formats:
        path = out / "report.md"
        path.write_text(_markdown_document(report, pngs, out), encoding="utf-8")
        written.append(path)
    if "tex" in formats:
        path = out / "report.tex"
        path.write_text("\n".join(render.to_latex(t) for t in report.tables), encoding="utf-8")
        written.append(path)
    if "html" in formats:
        path = out / "report.html"
        path.write_text(_html_page(report, pngs), encoding="utf-8")
        written.append(path)
    return written
