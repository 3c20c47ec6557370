"""`vistog-bench report RUN_DIR [RUN_DIR ...] [--out reports/NAME] [--reference FILE] [--formats md,tex,csv,html]`.

Reads result folders only (never runs a model) and writes tables, figures and one self-contained HTML page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_FORMATS = "md,tex,csv,html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="result folders (results/<run_id>)")
    parser.add_argument(
        "--out", "--output", dest="out", default=None, help="report folder (default: reports/<first run id>)"
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=None,
        metavar="FILE",
        help="published-numbers CSV, repeatable (default: results/reference/*.csv)",
    )
    parser.add_argument("--no-reference", action="store_true", help="leave the reported block out")
    parser.add_argument(
        "--formats",
        default=DEFAULT_FORMATS,
        help=f"comma-separated table formats (default: {DEFAULT_FORMATS}); figures are always written",
    )


def main(args: argparse.Namespace) -> int:
    from ..results import check_writable_dir
    from .build import build_report, parse_formats, write_report

    formats = parse_formats(args.formats)
    if args.out:
        check_writable_dir(args.out, "--out")
    references = [] if args.no_reference else args.reference
    report = build_report(args.run_dirs, references)
    out = (
        Path(args.out) if args.out else check_writable_dir(Path("reports") / report.data.run_ids[0], "--out (default)")
    )
    written = write_report(report, out, formats)
    main_files = [p for p in written if p.name.startswith("report.")]
    print(f"wrote {len(written)} files to {out}: " + ", ".join(str(p) for p in main_files))
    for mark, note in report.tables[0].notes:
        if not mark:
            print(f"note: {note}")
    return 0
