"""Published ("reported") numbers from `results/reference/*.csv`: shown in their own block, never averaged with ours.

A reference CSV has one row per method@budget: columns `method`, the budget as `visual_tokens` (per image) or, for
tables that give a share of the tokens instead (video papers), `retained_percent`; `source` (the paper and table),
optional `note`, optional `convention` (how the method counts its budget: `llm_input`, `layer_mean` or
`after_layer`, the names `AppliedMethod.budget_convention` uses; empty where the source does not say), and one column
per benchmark family (`gqa`, `mme`, `pope`, ...) in the unit papers print (`mme` as perception + cognition,
`mme_perception` alone, the rest in %). Optional `speedup` and `retention` columns give points for the
retention-vs-speedup figure. Retention of a reported row is computed only against a full-budget row (the largest
budget of its kind) of the same source, never across papers.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError

REQUIRED_COLUMNS = ("method", "source")
BUDGET_COLUMNS = ("visual_tokens", "retained_percent")  # one of them per file
TEXT_COLUMNS = ("method", *BUDGET_COLUMNS, "convention", "source", "note", "speedup", "retention")
CONVENTIONS = ("llm_input", "layer_mean", "after_layer")  # reducers.methods' names (not imported: no torch here)
DEFAULT_REFERENCE_DIR = Path("results") / "reference"


@dataclass(frozen=True)
class ReferenceRow:
    method: str
    visual_tokens: int | None  # None where the file gives `retained_percent` instead
    scores: dict[str, float]  # benchmark family -> reported value
    source: str
    note: str
    speedup: float | None
    retention: float | None  # percent: given in the file, else computed against the same source's full-budget row
    file: Path
    retained_percent: float | None = None
    convention: str = ""  # llm_input | layer_mean | after_layer | "" (not stated)

    @property
    def budget(self) -> tuple[str, float]:
        """(kind, value): ("tokens", 64) or ("percent", 25.0)."""
        return ("tokens", self.visual_tokens) if self.visual_tokens is not None else ("percent", self.retained_percent)

    @property
    def budget_label(self) -> str:
        return str(self.visual_tokens) if self.visual_tokens is not None else f"{self.retained_percent:g} %"


@dataclass(frozen=True)
class ReferenceSet:
    rows: tuple[ReferenceRow, ...]
    benchmarks: tuple[str, ...]
    files: tuple[Path, ...]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r.source for r in self.rows))


def _number(text: str, path: Path, line: int, column: str) -> float | None:
    text = (text or "").strip()
    if not text or text.lower() in ("n/a", "na", "-", "–"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"malformed reference file {path} line {line}: {column}={text!r} is not a number") from None


def read_reference_file(path: Path) -> tuple[list[dict], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"missing reference file: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"malformed reference file {path}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise UsageError(
            f"malformed reference file {path}: no column {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})"
        )
    budgets = [c for c in BUDGET_COLUMNS if c in header]
    if len(budgets) != 1:
        raise UsageError(
            f"malformed reference file {path}: needs exactly one budget column of {', '.join(BUDGET_COLUMNS)}, "
            f"got {', '.join(budgets) or 'none'}"
        )
    return rows, header


def load_reference(paths: Sequence[Path]) -> ReferenceSet:
    rows: list[ReferenceRow] = []
    benchmarks: list[str] = []
    for path in paths:
        raw_rows, header = read_reference_file(path)
        for b in header:
            if b not in TEXT_COLUMNS and b not in benchmarks:
                benchmarks.append(b)
        (budget_column,) = [c for c in BUDGET_COLUMNS if c in header]
        for line, raw in enumerate(raw_rows, start=2):
            raw = {(k or "").strip(): (v or "") for k, v in raw.items()}
            budget = _number(raw.get(budget_column, ""), path, line, budget_column)
            if budget is None or budget <= 0 or not raw.get("method", "").strip():
                raise UsageError(
                    f"malformed reference file {path} line {line}: needs a method and a {budget_column} > 0"
                )
            convention = raw.get("convention", "").strip()
            if convention and convention not in CONVENTIONS:
                raise UsageError(
                    f"malformed reference file {path} line {line}: convention={convention!r} is not one of "
                    f"{', '.join(CONVENTIONS)} (or empty)"
                )
            scores = {
                b: v
                for b in header
                if b not in TEXT_COLUMNS
                for v in [_number(raw.get(b, ""), path, line, b)]
                if v is not None
            }
            tokens = int(budget) if budget_column == "visual_tokens" else None
            rows.append(
                ReferenceRow(
                    raw["method"].strip(),
                    tokens,
                    scores,
                    raw.get("source", "").strip() or str(path.name),
                    raw.get("note", "").strip(),
                    _number(raw.get("speedup", ""), path, line, "speedup"),
                    _number(raw.get("retention", ""), path, line, "retention"),
                    Path(path),
                    retained_percent=None if tokens is not None else budget,
                    convention=convention,
                )
            )
    return ReferenceSet(tuple(_with_retention(rows)), tuple(benchmarks), tuple(Path(p) for p in paths))


def _with_retention(rows: list[ReferenceRow]) -> list[ReferenceRow]:
    """Fill in retention where the file gives none: the mean over benchmarks of value / the same source's value at the
    full budget (the largest visual-token count, or retained percent, in all the files). A source without a full-budget
    row gets none."""
    top: dict[str, float] = {}
    for row in rows:
        kind, value = row.budget
        top[kind] = max(top.get(kind, value), value)
    full_of = {}
    for row in rows:
        kind, value = row.budget
        if value == top[kind]:
            full_of.setdefault((kind, row.source), row)
    out = []
    for row in rows:
        retention = row.retention
        full = full_of.get((row.budget[0], row.source))
        if retention is None and full is not None:
            ratios = [100.0 * v / full.scores[b] for b, v in row.scores.items() if full.scores.get(b)]
            retention = statistics.fmean(ratios) if ratios else None
        out.append(replace(row, retention=retention))
    return out


def default_reference_files() -> list[Path]:
    """`results/reference/*.csv` under the working folder, else under the checkout this package lives in."""
    for folder in (DEFAULT_REFERENCE_DIR, Path(__file__).resolve().parents[2] / DEFAULT_REFERENCE_DIR):
        files = sorted(folder.glob("*.csv"))
        if files:
            return files
    return []
