"""Parsers for the comma-separated lists the subcommands take (`--tasks a,b`, `--budgets 576,64`)."""

from __future__ import annotations

from .errors import UsageError


def comma_list(text: str | None) -> tuple[str, ...]:
    """ "a, b,,c" -> ("a", "b", "c"); None or "" -> ()."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def int_list(text: str | None, flag: str, minimum: int | None = None) -> tuple[int, ...]:
    """Comma-separated integers of `flag`, each >= `minimum` when given; UsageError naming the flag otherwise."""
    try:
        values = tuple(int(part) for part in comma_list(text))
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None
    low = [v for v in values if minimum is not None and v < minimum]
    if low:
        raise UsageError(f"{flag} must be >= {minimum}, got {low[0]}")
    return values


__all__ = ["comma_list", "int_list"]
