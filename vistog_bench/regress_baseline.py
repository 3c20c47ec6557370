"""`vistog-bench baseline update RUN_DIR --name NAME`: freeze a run as the baseline `check` compares against.

The baseline file (`results/baselines/NAME.json`, committed) holds, per cell, lmms-eval's metrics and stderr as the
run recorded them, the values `check` compares (accuracy, retention, speedup, FLOPs, memory, latency, samples:
see `regress.py`), and the run's manifest, so a reader can tell which code, machine and settings made it:

    {"format": "vistog-bench-baseline/1", "name": ..., "created_at": ..., "source_run": ...,
     "manifest": {...RunManifest...},
     "cells": [{"task", "method", "budget", "status", "n_samples", "metrics", "stderr", "values": {...}}]}
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UsageError
from .regress import BASELINE_FORMAT, derive_values, load_baseline, parse_baseline
from .report.metrics import headline_score
from .results import check_writable_file, load_run, write_json

DEFAULT_OUT_DIR = Path("results/baselines")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def build_baseline(run_dir: str | Path, name: str) -> dict[str, Any]:
    """The baseline of one run as a JSON-ready dict (checked by the same parser `check` uses)."""
    if not _NAME.match(name):
        raise UsageError(f"baseline name {name!r}: use letters, digits, '.', '_' and '-' (it becomes NAME.json)")
    run = load_run(run_dir)
    cells = run.cells()
    if not cells:
        raise UsageError(f"run {run.path} has no cells in metrics.json: nothing to make a baseline of")
    if not any(c.ok and headline_score(c.task, c.metrics) is not None for c in cells):
        raise UsageError(f"run {run.path} has no cell with a finite headline metric (every cell failed, or its score "
                         "is NaN or missing): a baseline of it would hold nothing to compare")
    values = derive_values(cells, run.profile())
    data = {
        "format": BASELINE_FORMAT,
        "name": name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_run": str(run.path),
        "manifest": dataclasses.asdict(run.manifest()),
        "cells": [
            {
                "task": c.task,
                "method": c.method,
                "budget": c.budget,
                "status": c.status,
                "n_samples": c.n_samples,
                "metrics": c.metrics,
                "stderr": c.stderr,
                "values": values[c.key],
            }
            for c in sorted(cells, key=lambda c: (c.task, c.method, -c.budget))
        ],
    }
    parse_baseline(data, f"baseline {name} (being written)")
    return data


def write_baseline(run_dir: str | Path, name: str, out_dir: str | Path = DEFAULT_OUT_DIR) -> Path:
    """Write `out_dir/NAME.json` atomically from a run; returns its path."""
    data = build_baseline(run_dir, name)
    path = Path(out_dir) / f"{name}.json"
    check_writable_file(path, "--out-dir")
    write_json(path, data)
    return path


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
    not_ok = [c for c in data.cells if c.status != "ok"]
    for cell in not_ok:
        print(f"warning: cell {cell.key.slug()} is {cell.status!r} in the baseline", file=sys.stderr)
    print(f"wrote {path}: {len(data.cells)} cells, {sum(len(c.values) for c in data.cells)} values")
    return 0


__all__ = ["build_baseline", "write_baseline", "add_arguments", "main"]
