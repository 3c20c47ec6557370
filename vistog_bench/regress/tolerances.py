"""How far each value may move before `check` calls it a regression: named defaults per category, then overrides.

The shipped defaults are `vistog_bench/regress_tolerances.json` (each with its `why`); `--tolerances FILE` lays a
file of the same shape over them: its defaults replace fields of ours, its overrides come after ours, and the last
override whose `match` (a shell pattern over `<category>/<name>`, with optional `task` and `method` patterns) fits a
value wins. The file's shape is checked by pydantic (`TolerancesFile`).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
)

from ..errors import UsageError
from ..results import CellKey, Number, read_json, validation_message

DEFAULT_TOLERANCES = "regress_tolerances.json"  # package data of vistog_bench

CATEGORIES = ("accuracy", "retention", "speedup", "flops", "memory", "latency", "samples")
MODES = ("abs", "rel")
BETTER = ("higher", "lower", "equal")


@dataclass(frozen=True)
class Tolerance:
    """How far a value may move before it is a regression.

    `mode="abs"`: `allowed` is in the value's own units (points of the metric); `mode="rel"`: a fraction of the
    baseline value. `better` says which direction is good; `equal` fails on a move either way.
    """

    mode: str
    allowed: float
    better: str
    enabled: bool = True
    why: str = ""

    def slack(self, baseline: float) -> float:
        return self.allowed if self.mode == "abs" else self.allowed * abs(baseline)

    def describe(self) -> str:
        if self.allowed == 0:
            return "exact"
        amount = (
            f"{self.allowed:g}"
            if self.mode == "abs"
            else f"{self.allowed:.0%}"
            if self.allowed >= 0.01
            else f"{self.allowed:g} rel"
        )
        sign = {"higher": "-", "lower": "+", "equal": "±"}[self.better]
        return f"{sign}{amount}"


@dataclass(frozen=True)
class Override:
    """A tolerance for values whose key (and optionally task / method) match shell-style patterns."""

    match: str
    fields: Mapping[str, Any]
    task: str = "*"
    method: str = "*"

    def applies(self, cell: CellKey, key: str) -> bool:
        return (
            fnmatch.fnmatchcase(key, self.match)
            and fnmatch.fnmatchcase(cell.task, self.task)
            and fnmatch.fnmatchcase(cell.method, self.method)
        )


@dataclass(frozen=True)
class Tolerances:
    """Named defaults per category, then overrides in file order; the last matching override wins."""

    defaults: Mapping[str, Tolerance]
    overrides: tuple[Override, ...] = ()

    def for_value(self, cell: CellKey, key: str) -> Tolerance:
        category = key.split("/", 1)[0]
        if category not in self.defaults:
            raise UsageError(f"no tolerance for category {category!r} (value {key}); known: {', '.join(self.defaults)}")
        tolerance = self.defaults[category]
        for override in self.overrides:
            if override.applies(cell, key):
                tolerance = replace(tolerance, **override.fields)
        return tolerance


# -- the file ---------------------------------------------------------------------------------------------------
class ToleranceFields(BaseModel):
    """Some or all fields of a `Tolerance`; unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal[MODES] | None = None
    allowed: Annotated[Number, Field(ge=0)] | None = None
    better: Literal[BETTER] | None = None
    enabled: StrictBool | None = None
    why: StrictStr | None = None


class OverrideFields(ToleranceFields):
    match: StrictStr
    task: StrictStr = "*"
    method: StrictStr = "*"


class TolerancesFile(BaseModel):
    """A tolerances file: `{"defaults": {category: fields}, "overrides": [fields + match]}` (other keys, such as
    `about`, are ignored)."""

    defaults: dict[Literal[CATEGORIES], ToleranceFields] = {}
    overrides: list[OverrideFields] = []


def _given(fields: ToleranceFields) -> dict[str, Any]:
    return fields.model_dump(exclude_unset=True, exclude={"match", "task", "method"})


def _merge_tolerances(base: Tolerances | None, data: Any, source: str) -> Tolerances:
    try:
        parsed = TolerancesFile.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"malformed tolerances file {source}: {validation_message(exc)}") from None
    defaults = dict(base.defaults) if base else {}
    for category, fields in parsed.defaults.items():
        given = _given(fields)
        if category in defaults:
            defaults[category] = replace(defaults[category], **given)
            continue
        missing = {"mode", "allowed", "better"} - given.keys()
        if missing:
            raise UsageError(f"tolerances file {source}, defaults.{category}: lacks {', '.join(sorted(missing))}")
        defaults[category] = Tolerance(**given)
    missing = set(CATEGORIES) - defaults.keys()
    if missing:
        raise UsageError(f"tolerances file {source}: no defaults for {', '.join(sorted(missing))}")
    overrides = [Override(o.match, _given(o), o.task, o.method) for o in parsed.overrides]
    return Tolerances(defaults=defaults, overrides=(*(base.overrides if base else ()), *overrides))


def default_tolerances() -> Tolerances:
    """The documented defaults shipped in `vistog_bench/regress_tolerances.json`."""
    text = resources.files("vistog_bench").joinpath(DEFAULT_TOLERANCES).read_text(encoding="utf-8")
    return _merge_tolerances(None, json.loads(text), DEFAULT_TOLERANCES)


def load_tolerances(path: str | Path | None = None) -> Tolerances:
    """The defaults, with the file at `path` laid over them (its defaults per field, its overrides after ours)."""
    tolerances = default_tolerances()
    if path is None:
        return tolerances
    path = Path(path)
    return _merge_tolerances(tolerances, read_json(path, "tolerances file"), str(path))


__all__ = [
    "CATEGORIES",
    "Override",
    "Tolerance",
    "Tolerances",
    "TolerancesFile",
    "default_tolerances",
    "load_tolerances",
]
