"""`vistog-bench`: run, status, profile, report, check, baseline, tasks, methods, train.

Each subcommand lives in the module that does its work; that module exposes `add_arguments(parser)` and
`main(args) -> int`, and keeps heavy imports (torch, lmms-eval) inside `main` so `--help` stays fast.
Exit codes, for every subcommand:

    0  done, all well
    1  the work ran and found a problem: a cell failed (`run`), a regression (`check`)
    2  bad input: a `UsageError` (arguments, paths, unreadable or unwritable files), or another operating-system
       error on a file (permission, read-only filesystem, missing folder); one line on stderr
    3  the disk, the quota or the file-size limit (`ulimit -f`) filled up: one line says which file could not be
       written and what the run folder already holds; everything written before is intact (result files and report
       files are written to a temporary name and renamed whole, appends are cut back on failure)
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UsageError
from .results import DISK_FULL_ERRNOS, DISK_FULL_EXIT, disk_full_message

# subcommand -> (module, one-line help)
COMMANDS = {
    "run": (
        "vistog_bench.run.cli",
        "evaluate methods x budgets x tasks through lmms-eval (no arguments: embedded default)",
    ),
    "status": ("vistog_bench.run.status", "each cell of a run: queued / running / ok / failed, worker, log"),
    "tasks": ("vistog_bench.run.tasks", "list the lmms-eval tasks and groups available, ours included"),
    "methods": (
        "vistog_bench.reducers.cli",
        "list the methods: where each acts, how its budget counts, families, options, reference",
    ),
    "profile": ("vistog_bench.profiling.cli", "controlled latency / FLOPs / memory / energy measurement per budget"),
    "report": ("vistog_bench.report.cli", "render tables and figures from result folders"),
    "check": ("vistog_bench.regress", "compare a run with a baseline; exit 1 on regression"),
    "baseline": (
        "vistog_bench.regress.baseline_cli",
        "write a baseline from a run: `baseline update RUN_DIR --name NAME`",
    ),
    "train": ("vistog_bench.train.cli", "train LLaVA / VisToG (stage 1 and 2) on LLaVA-format conversation data"),
    "selftest": (
        "vistog_bench.selftest",
        "exercise every measuring path on this machine; one JSON + one Markdown table",
    ),
}


# -- parsers for the comma-separated lists the subcommands take (`--tasks a,b`, `--budgets 576,64`) ----------------
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vistog-bench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # `vistog-bench` with no arguments runs the main job on the embedded default.
    args = parser.parse_args(argv or ["run"])
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"vistog-bench {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            message = disk_full_message(exc, resume_hint=args.command == "run")
            print(f"vistog-bench {args.command}: error: {message}", file=sys.stderr)
            return DISK_FULL_EXIT
        where = f": {exc.filename}" if exc.filename else ""
        print(f"vistog-bench {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return UsageError.exit_code
    except KeyboardInterrupt:
        print(f"vistog-bench {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
