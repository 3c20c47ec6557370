"""`vistog-bench baseline update RUN_DIR --name NAME`: freeze a run as the baseline `check` compares against."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .baseline import DEFAULT_OUT_DIR, load_baseline, write_baseline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    update = actions.add_parser("update", help="write results/baselines/NAME.json from a run folder")
    update.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, results/<run_id>/")
    update.add_argument("--name", required=True, help="baseline name: the file becomes OUT_DIR/NAME.json")
    update.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="where baselines live (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    if args.action != "update":
        raise UsageError(f"unknown baseline action {args.action!r}; allowed: update")
    path = write_baseline(args.run_dir, args.name, args.out_dir)
    data = load_baseline(path)
    for cell in data.cells:
        if cell.status != "ok":
            print(f"warning: cell {cell.key.slug()} is {cell.status!r} in the baseline", file=sys.stderr)
    print(f"wrote {path}: {len(data.cells)} cells, {sum(len(c.values) for c in data.cells)} values")
    return 0


__all__ = ["add_arguments", "main"]
