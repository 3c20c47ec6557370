"""The methods by name: one lazy `"module:attr"` entry per method, resolved to its `MethodSpec` on first use.

    spec("tome")                                # MethodSpec, declared in reducers/tome.py
    parse_method("tome[order=spatial]")         # MethodChoice("tome", {"order": "spatial"}), checked by the spec
    split_methods("pdrop[layers=2,6,12],fastv") # ["pdrop[layers=2,6,12]", "fastv"]

Adding a method: its file declares `SPEC = MethodSpec(...)` (spec.py) and one line of `_ENTRIES` names it. Entries
are import paths, not imports, as lmms-eval's model registry keeps class paths (lmms_eval 0.7.3
`models/registry_v2.py`, `ModelManifest.simple_class_path`): listing the names (`--help`, the CLI's checks) imports
nothing, and a method's module (and torch) loads when its spec is first asked for. `register` adds one from outside
the package. The CLI syntax for options is the report's label: `name[option=value,option=value]` (quote it in a
shell: brackets are glob characters).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import UsageError
from .spec import EVERY_FAMILY, MethodSpec

_ENTRIES: dict[str, str] = {  # method -> "module:attr" of its MethodSpec, in the order tables list them
    "none": "vistog_bench.reducers.checkpoint:NONE",
    "vistog": "vistog_bench.reducers.checkpoint:VISTOG",
    "pool": "vistog_bench.reducers.pool:SPEC",
    "random": "vistog_bench.reducers.random_choice:SPEC",
    "tome": "vistog_bench.reducers.tome:SPEC",
    "visionzip": "vistog_bench.reducers.visionzip:SPEC",
    "prumerge": "vistog_bench.reducers.prumerge:SPEC",
    "fastv": "vistog_bench.reducers.fastv:SPEC",
    "divprune": "vistog_bench.reducers.divprune:SPEC",
    "vispruner": "vistog_bench.reducers.vispruner:SPEC",
    "cdpruner": "vistog_bench.reducers.cdpruner:SPEC",
    "dart": "vistog_bench.reducers.dart:SPEC",
    "pdrop": "vistog_bench.reducers.pdrop:SPEC",
    "sparsevlm": "vistog_bench.reducers.sparsevlm:SPEC",
    "vscan": "vistog_bench.reducers.vscan:SPEC",
    "downsample": "vistog_bench.reducers.downsample:SPEC",
    "holitom": "vistog_bench.reducers.holitom:SPEC",
}
_RESOLVED: dict[str, MethodSpec] = {}


def register(name: str, target: str) -> None:
    """Add method `name` whose MethodSpec is `target` ("package.module:ATTR"); a name already taken is refused."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a method entry is 'module:attr', got {target!r}")
    if name in _ENTRIES:
        raise ValueError(f"method {name!r} is already registered ({_ENTRIES[name]})")
    _ENTRIES[name] = target


def method_names() -> tuple[str, ...]:
    """Every method, in table order (nothing imported)."""
    return tuple(_ENTRIES)


def spec(name: str) -> MethodSpec:
    """The MethodSpec of a registered method (imports its module on first use)."""
    name = check_method(name)
    if name not in _RESOLVED:
        module, _, attr = _ENTRIES[name].partition(":")
        found = getattr(importlib.import_module(module), attr)
        if not isinstance(found, MethodSpec) or found.name != name:
            raise TypeError(f"{_ENTRIES[name]} is not the MethodSpec of {name!r}")
        _RESOLVED[name] = found
    return _RESOLVED[name]


def specs() -> tuple[MethodSpec, ...]:
    return tuple(spec(name) for name in _ENTRIES)


def check_method(method: str) -> str:
    """The registered name of `method` (case and spaces ignored), or UsageError with the nearest name."""
    name = str(method).strip().lower()
    if name not in _ENTRIES:
        near = difflib.get_close_matches(name, _ENTRIES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UsageError(f"unknown method {method!r}{hint}; known: {', '.join(_ENTRIES)}")
    return name


@dataclass(frozen=True)
class MethodChoice:
    """A method and the options it runs with (those given; the others take the spec's defaults)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def label(self) -> str:
        """`name`, or `name[option=value,...]` in the spec's option order: the syntax `parse_method` reads."""
        return method_label(self.name, self.options)


def method_label(name: str, options: Mapping[str, Any]) -> str:
    shown = {o.name: options[o.name] for o in spec(name).options if options.get(o.name) is not None}
    return f"{name}[{','.join(f'{k}={v}' for k, v in shown.items())}]" if shown else name


def parse_method(text: str) -> MethodChoice:
    """`tome` or `tome[order=spatial,matching=model]` -> MethodChoice, options typed and checked by the spec."""
    text = str(text).strip()
    name, bracket, rest = text.partition("[")
    if not bracket:
        return MethodChoice(check_method(name))
    if not rest.endswith("]") or "[" in rest[:-1] or not rest[:-1].strip():
        raise UsageError(f"method {text!r}: options go in one pair of brackets, e.g. tome[order=spatial]")
    method = spec(name)
    return MethodChoice(method.name, MappingProxyType(method.parse_options(rest[:-1])))


def resolve(method: str, options: Mapping[str, Any] | None = None) -> tuple[MethodSpec, dict[str, Any]]:
    """The spec of `method` (a name or `name[option=value,...]`) and its options with `options` added, checked; an
    option given both ways is refused."""
    choice = parse_method(method)
    options = dict(options or {})
    twice = sorted(set(choice.options) & set(options))
    if twice:
        raise UsageError(f"method {choice.name}: option {twice[0]} given twice")
    found = spec(choice.name)
    return found, found.check_options({**choice.options, **options})


def split_methods(text: str) -> list[str]:
    """A comma-separated list of methods, commas inside brackets kept: `pdrop[layers=2,6,12],fastv` -> 2 items."""
    items, depth, current = [], 0, []
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth <= 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def method_labels(text: str | None) -> tuple[str, ...]:
    """`--method` text -> each method's label (checked, options in the spec's order), in the order given."""
    return tuple(parse_method(item).label for item in split_methods(text or ""))


def methods_table(markdown: bool = False) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of every registered method: where it acts, how its budget counts, what each <image> of the
    prompt expands to, the families it runs on, its options (default, or choices with the default first) and the
    implementation it follows. `markdown`: docs/reducers.md's table (names in backticks, where in full);
    otherwise the terminal's (`vistog-bench methods`: where as the spec's `acts`, no prompt column)."""
    quote = "`" if markdown else ""
    headers = ["method", "where", "budget", "prompt tokens", "families", "options", "reference"]
    rows = []
    for method in specs():
        options = ", ".join(f"{quote}{o.name}{quote}{o.describe()}" for o in method.options) or "—"
        families = "all" if method.families == EVERY_FAMILY else ", ".join(method.families)
        where = method.where if markdown else " + ".join(method.acts) or "—"
        row = [f"{quote}{method.name}{quote}", where, method.budget_convention, method.prompt_tokens, families]
        rows.append([*row, options, method.reference])
    if not markdown:
        headers.pop(3)
        for row in rows:
            row.pop(3)
    return headers, rows


def methods_markdown() -> str:
    """The methods table as docs/reducers.md holds it (a test keeps the page equal to this)."""
    headers, rows = methods_table(markdown=True)
    lines = [headers, ["---"] * len(headers), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"


__all__ = [
    "MethodChoice",
    "check_method",
    "method_label",
    "method_labels",
    "method_names",
    "methods_markdown",
    "methods_table",
    "parse_method",
    "register",
    "resolve",
    "spec",
    "specs",
    "split_methods",
]
