"""`vistog-bench methods`: the registered methods, from their specs (reducers/registry.py).

vistog-bench methods               # one row per method: where it acts, budget convention, families, options
vistog-bench methods tome          # everything tome's spec declares, options with their types and help
vistog-bench methods --markdown    # the table docs/reducers.md holds
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", nargs="?", help="one method: all its spec says (options, paper settings, families)")
    parser.add_argument("--markdown", action="store_true", help="the table as docs/reducers.md holds it")


def describe(name: str) -> str:
    """All that `name`'s spec declares, one fact a line."""
    from .registry import spec
    from .spec import EVERY_FAMILY

    method = spec(name)
    families = "all" if method.families == EVERY_FAMILY else ", ".join(method.families)
    lines = [
        f"{method.name}: {method.summary}",
        f"  acts: {', '.join(method.acts) or 'nowhere (nothing reduced)'}; {method.where}",
        f"  budget convention: {method.budget_convention}; each <image> of the prompt: {method.prompt_tokens}",
        f"  families: {families}" + (" (its own trained checkpoints)" if method.trained else ""),
        f"  reference: {method.reference}",
    ]
    if method.paper:
        lines.append(f"  paper settings: {method.paper}")
    if method.paper_layers:
        lines.append(
            f"  paper layers (of a 32-layer LLM, scaled to others): {', '.join(map(str, method.paper_layers))}"
        )
    for option in method.options:
        default = "derived" if option.default is None else repr(option.default)
        choices = f"; one of {', '.join(map(repr, option.choices))}" if option.choices else ""
        lines.append(f"  option {option.name} ({option.type.__name__}, default {default}{choices}): {option.help}")
    if method.options:
        example = method.options[0]
        value = example.choices[-1] if example.choices else example.default if example.default is not None else "..."
        lines.append(f"  e.g. --method '{method.name}[{example.name}={value}]'")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .registry import methods_markdown, methods_table

    if args.method:
        print(describe(args.method))
    elif args.markdown:
        print(methods_markdown(), end="")
    else:
        headers, rows = methods_table()
        print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None, 16, None, 16, 34, 30]))
    return 0


__all__ = ["add_arguments", "describe", "main"]
