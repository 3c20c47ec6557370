"""The baseline file `check` compares a run with, and how one is made from a run (`vistog-bench baseline update`).

`results/baselines/NAME.json` (committed) holds, per cell, lmms-eval's metrics and stderr as the run recorded them,
the values `check` compares (`regress.values`), and the run's manifest, so a reader can tell which code, machine and
settings made it:

    {"format": "vistog-bench-baseline/1", "name": ..., "created_at": ..., "source_run": ...,
     "manifest": {...RunManifest...},
     "cells": [{"task", "method", "budget", "status", "n_samples", "metrics", "stderr", "values": {...}}]}

The shape is checked by pydantic (`BaselineFile`), on reading and before writing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, StrictInt, StrictStr, ValidationError, field_validator

from ..analysis import headline_score
from ..errors import UsageError
from ..results import (
    CellKey,
    Number,
    check_writable_file,
    load_run,
    read_json,
    validation_message,
    write_json,
)
from .tolerances import CATEGORIES
from .values import derive_values

BASELINE_FORMAT = "vistog-bench-baseline/1"
DEFAULT_OUT_DIR = Path("results/baselines")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BaselineCellFile(BaseModel):
    """One cell of a baseline file (metrics, stderr and n_samples are kept for readers, not compared)."""

    task: StrictStr
    method: StrictStr
    budget: StrictInt
    status: StrictStr
    values: dict[str, Number]

    @field_validator("values")
    @classmethod
    def _known_categories(cls, values: dict[str, float]) -> dict[str, float]:
        bad = [k for k in values if k.split("/", 1)[0] not in CATEGORIES]
        if bad:
            raise ValueError(f"values of unknown category: {', '.join(bad)}")
        return values


class BaselineFile(BaseModel):
    format: Literal[BASELINE_FORMAT]
    name: str = ""
    cells: list[BaselineCellFile]
    manifest: dict[str, Any] | None = None


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
    try:
        parsed = BaselineFile.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"malformed baseline {source}: {validation_message(exc)}") from None
    if not parsed.cells:
        raise UsageError(
            f"baseline {source} has no cells: nothing to compare a run with "
            "(write one with `vistog-bench baseline update RUN_DIR --name NAME`)"
        )
    cells = tuple(BaselineCell(CellKey(c.task, c.method, c.budget), c.status, dict(c.values)) for c in parsed.cells)
    if len({c.key for c in cells}) != len(cells):
        raise UsageError(f"malformed baseline {source}: a cell is listed twice")
    return Baseline(name=parsed.name, cells=cells, manifest=parsed.manifest or {}, source=source)


def load_baseline(path: str | Path) -> Baseline:
    path = Path(path)
    return parse_baseline(read_json(path, "baseline"), str(path))


def build_baseline(run_dir: str | Path, name: str) -> dict[str, Any]:
    """The baseline of one run as a JSON-ready dict (checked by the same parser `check` uses)."""
    if not _NAME.match(name):
        raise UsageError(f"baseline name {name!r}: use letters, digits, '.', '_' and '-' (it becomes NAME.json)")
    run = load_run(run_dir)
    cells = run.cells()
    if not cells:
        raise UsageError(f"run {run.path} has no cells in metrics.json: nothing to make a baseline of")
    if not any(c.ok and headline_score(c.task, c.metrics) is not None for c in cells):
        raise UsageError(
            f"run {run.path} has no cell with a finite headline metric (every cell failed, or its score "
            "is NaN or missing): a baseline of it would hold nothing to compare"
        )
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


__all__ = [
    "BASELINE_FORMAT",
    "Baseline",
    "BaselineCell",
    "BaselineFile",
    "build_baseline",
    "load_baseline",
    "parse_baseline",
    "write_baseline",
]
