"""`vistog-bench check RUN_DIR --baseline FILE`: exit 1 on a regression.

Exit 2 is for unreadable input (UsageError), a baseline with no cells (nothing to hold the run to), and an
unwritable --junit / --summary (checked before the comparison; the files are written before the verdict is printed,
so a printed verdict is always the exit code's). Exit 3: the disk filled up while writing them.
"""

from __future__ import annotations

import argparse
import sys

from ..results import check_writable_file, write_output_text
from . import render
from .compare import check_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, results/<run_id>/")
    parser.add_argument(
        "--baseline",
        required=True,
        metavar="FILE",
        help="baseline JSON written by `vistog-bench baseline update` (results/baselines/NAME.json)",
    )
    parser.add_argument(
        "--tolerances",
        metavar="FILE",
        help="JSON laid over the defaults in vistog_bench/regress_tolerances.json (see docs/regression.md)",
    )
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML here (one test case per compared value)")
    parser.add_argument(
        "--summary", metavar="FILE", help="write a Markdown summary here (CI: `cat` it into $GITHUB_STEP_SUMMARY)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only failures and the headline, not every value")


def main(args: argparse.Namespace) -> int:
    for flag, path in (("--junit", args.junit), ("--summary", args.summary)):
        if path:
            check_writable_file(path, flag)
    report = check_run(args.run_dir, args.baseline, args.tolerances)
    # Files first: a verdict on stdout is only printed once nothing can fail any more.
    if args.junit:
        write_output_text(args.junit, report.to_junit_xml(), "--junit")
    if args.summary:
        write_output_text(args.summary, report.to_markdown(), "--summary")
    if not args.quiet:
        print(render.text_table(report.findings))
    elif report.failures:
        print(render.text_table(report.failures))
    for note in report.notes:
        print(f"note: {note}")
    print(report.headline())
    sys.stdout.flush()
    return report.exit_code


__all__ = ["add_arguments", "main"]
