"""Published ("reported") numbers from `results/reference/*.csv`: shown in their own block, never averaged with ours.

A reference CSV has one row per method@visual-token count: columns `method`, `visual_tokens`, `source` (the paper
and table), optional `note`, and one column per benchmark family (`gqa`, `mme`, `pope`, ...) in the unit papers print
(MME as perception + cognition, the rest in %). Optional `speedup` and `retention` columns give points for the
retention-vs-speedup figure. Retention of a reported row is computed only against a full-budget row (the largest
`visual_tokens`) of the same source, never across papers.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

REQUIRED_COLUMNS = ("method", "visual_tokens", "source")
TEXT_COLUMNS = ("method", "visual_tokens", "source", "note", "speedup", "retention")
DEFAULT_REFERENCE_DIR = Path("results") / "reference"


@dataclass(frozen=True)
class ReferenceRow:
    method: str
    visual_tokens: int
    scores: dict[str, float]  # benchmark family -> reported value
    source: str
    note: str
    speedup: float | None
    retention: float | None  # percent: given in the file, else computed against the same source's full-budget row
    file: Path


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
        raise UsageError(f"malformed reference file {path}: no column {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
    return rows, header


def load_reference(paths: Sequence[Path]) -> ReferenceSet:
    rows: list[ReferenceRow] = []
    benchmarks: list[str] = []
    for path in paths:
        raw_rows, header = read_reference_file(path)
        for b in header:
            if b not in TEXT_COLUMNS and b not in benchmarks:
                benchmarks.append(b)
        for line, raw in enumerate(raw_rows, start=2):
            raw = {(k or "").strip(): (v or "") for k, v in raw.items()}
            tokens = _number(raw.get("visual_tokens", ""), path, line, "visual_tokens")
            if tokens is None or not raw.get("method", "").strip():
                raise UsageError(f"malformed reference file {path} line {line}: needs a method and visual_tokens")
            scores = {b: v for b in header if b not in TEXT_COLUMNS
                      for v in [_number(raw.get(b, ""), path, line, b)] if v is not None}
            rows.append(ReferenceRow(raw["method"].strip(), int(tokens), scores, raw.get("source", "").strip() or str(path.name),
                                     raw.get("note", "").strip(), _number(raw.get("speedup", ""), path, line, "speedup"),
                                     _number(raw.get("retention", ""), path, line, "retention"), Path(path)))
    return ReferenceSet(tuple(_with_retention(rows)), tuple(benchmarks), tuple(Path(p) for p in paths))


def _with_retention(rows: list[ReferenceRow]) -> list[ReferenceRow]:
    """Fill in retention where the file gives none: the mean over benchmarks of value / the same source's value at the
    full budget (the largest visual-token count in all the files). A source without a full-budget row gets none."""
    if not rows:
        return []
    top = max(r.visual_tokens for r in rows)
    full_of = {}
    for row in rows:
        if row.visual_tokens == top:
            full_of.setdefault(row.source, row)
    out = []
    for row in rows:
        retention = row.retention
        full = full_of.get(row.source)
        if retention is None and full is not None:
            ratios = [100.0 * v / full.scores[b] for b, v in row.scores.items() if full.scores.get(b)]
            retention = statistics.fmean(ratios) if ratios else None
        out.append(ReferenceRow(row.method, row.visual_tokens, row.scores, row.source, row.note, row.speedup,
                                retention, row.file))
    return out


def default_reference_files() -> list[Path]:
    """`results/reference/*.csv` under the working folder, else under the checkout this package lives in."""
    for folder in (DEFAULT_REFERENCE_DIR, Path(__file__).resolve().parents[2] / DEFAULT_REFERENCE_DIR):
        files = sorted(folder.glob("*.csv"))
        if files:
            return files
    return []
